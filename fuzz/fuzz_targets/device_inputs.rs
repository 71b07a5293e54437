//! Fuzzes the data plane's protocol core (`wg-device`) with what an attacker controls: a
//! sequence of datagrams from arbitrary sources and times, against a device with a private
//! key, two peers and a live session, with its timers run in between. Nothing may panic,
//! nothing forged may be delivered, and what it queues stays bounded.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use wg_device::{Device, KeydToDatad, MAX_KEYD_BACKLOG, Received};
use wg_ipc::messages::{PeerUpdate, SecretBytes, SessionKeys};
use wg_wire::PublicKey;

fn configured(now: Instant) -> Device {
    let mut device = Device::new(StdRng::seed_from_u64(1));
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut feed = |msg| {
        if device.handle_keyd(msg, now, wall).is_err() {
            unreachable!("a well-formed configuration is accepted");
        }
    };
    feed(KeydToDatad::Interface {
        public_key: Some(PublicKey([9; 32])),
    });
    for (i, net) in [(1u8, "10.0.0.0/8"), (2, "::/0")] {
        feed(KeydToDatad::Peer(PeerUpdate {
            public_key: PublicKey([i; 32]),
            endpoint: Some(SocketAddr::from(([192, 0, 2, i], 51820))),
            allowed_ips: vec![net.parse().unwrap_or_else(|_| unreachable!())],
            persistent_keepalive: u16::from(i) * 10,
            more_allowed_ips: false,
        }));
    }
    feed(KeydToDatad::Session(SessionKeys {
        public_key: PublicKey([1; 32]),
        initiator: true,
        local_index: 7,
        remote_index: 8,
        send: SecretBytes([4; 32]),
        recv: SecretBytes([5; 32]),
        endpoint: None,
    }));
    device
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut device = configured(start);
    let mut now = start;
    // Each record: 1 byte time step (in 100 ms), 1 byte source, 2 bytes length, the bytes.
    let mut rest = data;
    while let [step, source, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        now += Duration::from_millis(u64::from(*step) * 100);
        let from = SocketAddr::from(([198, 18, 0, *source], 4000 + u16::from(*source)));
        let mut bytes = datagram.to_vec();
        if let Ok(Received::Data { .. }) = device.handle_datagram(&mut bytes, from, now) {
            unreachable!("a forged transport message was delivered");
        }
        if device.poll_timeout(now).is_some_and(|t| t <= now) {
            device.handle_timeout(now);
        }
        while device.poll_transmit().is_some() {}
        while device.poll_event().is_some() {}
        assert!(device.keyd_backlog() <= MAX_KEYD_BACKLOG + 64, "keyd queue unbounded");
    }
});
