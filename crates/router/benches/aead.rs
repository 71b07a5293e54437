//! Transport data cost per packet, single-threaded, through the public API, for inner
//! IPv4 packets of 64, 1420 and 8192 bytes. The AEAD backend is the build's:
//! RustCrypto `chacha20poly1305` by default, `ring` with `--features ring`.
//!
//! - `outbound`: [`Router::route_outbound`] (header parse, allowed-IPs lookup, counter)
//!   then [`SealJob::seal`] in place: the whole per-packet send path minus I/O. The
//!   buffer is sealed again every iteration without restoring the plaintext; the cost of
//!   ChaCha20-Poly1305 does not depend on the bytes.
//! - `open`: [`OpenJob::open`] alone. Opening is pure, so one message is planned once
//!   and every iteration decrypts a fresh copy of it (the copy is made outside the timing).
//! - `inbound`: [`Router::plan_inbound`] + [`OpenJob::open`] +
//!   [`Router::finish_inbound`] (replay window, endpoint, counters, source check). The
//!   replay window rejects a counter it has seen, so one iteration is a burst of
//!   [`BURST`] distinct pre-sealed messages delivered to a freshly confirmed responder
//!   router (router and copies made outside the timing); divan's time is per burst,
//!   divide by [`BURST`] for per packet (the throughput column needs no division).
//!
//! Throughput counts inner IP packet bytes, not the 32 bytes of header and tag.
//! Keep runs short on a shared machine: `-- --sample-count 10 --max-time 1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::time::Instant;

use divan::counter::BytesCount;
use divan::{Bencher, black_box};
use ipnet::IpNet;
use wg_router::{HEADROOM, NewSession, OpenJob, Outbound, PeerId, Router, TAILROOM};
use wg_wire::SessionKey;

/// Inner packet sizes: a small packet, a full packet at the default MTU, and a
/// GSO-sized super-packet.
const SIZES: [usize; 3] = [64, 1420, 8192];
/// Messages per `inbound` iteration; a plausible burst for one TUN/UDP batch.
const BURST: usize = 256;

const INITIATOR_ADDR: [u8; 4] = [10, 0, 0, 1];
const RESPONDER_ADDR: [u8; 4] = [10, 0, 0, 2];
const INITIATOR_INDEX: u32 = 0x1111_1111;
const RESPONDER_INDEX: u32 = 0x2222_2222;

fn main() {
    divan::main();
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn endpoint(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A valid IPv4 packet of `len` bytes (UDP, IHL 5) from the initiator to the responder.
fn ipv4_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0xa5u8; len];
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    p[4..8].fill(0);
    p[8] = 64;
    p[9] = 17;
    p[10..12].fill(0);
    p[12..16].copy_from_slice(&INITIATOR_ADDR);
    p[16..20].copy_from_slice(&RESPONDER_ADDR);
    p
}

/// The sending side: one peer (the responder) with a session we initiated.
fn initiator(now: Instant) -> Router {
    let mut router = Router::new();
    let peer = router.add_peer();
    router.insert_allowed_ip(peer, net("10.0.0.2/32")).unwrap();
    router.set_endpoint(peer, endpoint("192.0.2.2:51820"));
    router
        .add_session(
            peer,
            NewSession {
                initiator: true,
                local_index: INITIATOR_INDEX,
                remote_index: RESPONDER_INDEX,
                send: SessionKey::from_bytes([1; 32]),
                recv: SessionKey::from_bytes([2; 32]),
            },
            now,
        )
        .unwrap();
    router
}

/// The receiving side, with the matching session not yet confirmed.
fn responder(now: Instant) -> (Router, PeerId) {
    let mut router = Router::new();
    let peer = router.add_peer();
    router.insert_allowed_ip(peer, net("10.0.0.1/32")).unwrap();
    router.set_endpoint(peer, endpoint("192.0.2.1:51820"));
    router
        .add_session(
            peer,
            NewSession {
                initiator: false,
                local_index: RESPONDER_INDEX,
                remote_index: INITIATOR_INDEX,
                send: SessionKey::from_bytes([2; 32]),
                recv: SessionKey::from_bytes([1; 32]),
            },
            now,
        )
        .unwrap();
    (router, peer)
}

/// Seals `packet` with the initiator's next counter into a transport message.
fn seal_one(router: &mut Router, packet: &[u8], now: Instant) -> Vec<u8> {
    let Outbound::Send { job, .. } = router.route_outbound(packet, now) else {
        panic!("initiator cannot send");
    };
    let mut buf = vec![0u8; HEADROOM + packet.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
    let n = job.seal(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// Delivers one message to `router`, checking that it is accepted as data.
fn deliver(router: &mut Router, message: &mut [u8], now: Instant) -> usize {
    let source = endpoint("192.0.2.1:51820");
    let job: OpenJob = router.plan_inbound(message, now).unwrap();
    let n = job.open(message).unwrap();
    let inbound = router
        .finish_inbound(
            &job,
            &message[HEADROOM..HEADROOM + n],
            message.len(),
            source,
            now,
        )
        .unwrap();
    match inbound.kind {
        wg_router::InboundKind::Data { len } => len,
        other => panic!("not delivered: {other:?}"),
    }
}

/// Route and seal one packet per iteration.
#[divan::bench(args = SIZES, sample_count = 30, max_time = 2)]
fn outbound(bencher: Bencher<'_, '_>, size: usize) {
    let now = Instant::now();
    let mut router = initiator(now);
    let packet = ipv4_packet(size);
    let mut buf = vec![0u8; HEADROOM + size + TAILROOM];
    buf[HEADROOM..HEADROOM + size].copy_from_slice(&packet);
    bencher.counter(BytesCount::new(size)).bench_local(|| {
        match router.route_outbound(black_box(&packet), now) {
            Outbound::Send { job, .. } => job.seal(black_box(&mut buf)).unwrap(),
            other => panic!("not sent: {other:?}"),
        }
    });
}

/// Decrypt a copy of one sealed message per iteration (the AEAD alone).
#[divan::bench(args = SIZES, sample_count = 30, max_time = 2)]
fn open(bencher: Bencher<'_, '_>, size: usize) {
    let now = Instant::now();
    let mut sender = initiator(now);
    let (mut receiver, _) = responder(now);
    // The first message confirms the responder's keypair.
    let mut first = seal_one(&mut sender, &ipv4_packet(size), now);
    assert_eq!(deliver(&mut receiver, &mut first, now), size);
    let sealed = seal_one(&mut sender, &ipv4_packet(size), now);
    let job = receiver.plan_inbound(&sealed, now).unwrap();
    bencher
        .counter(BytesCount::new(size))
        .with_inputs(|| sealed.clone())
        .bench_local_refs(|message| job.open(black_box(message)).unwrap());
}

/// Plan, open and finish a burst of `BURST` distinct messages per iteration.
#[divan::bench(args = SIZES, sample_count = 30, max_time = 2)]
fn inbound(bencher: Bencher<'_, '_>, size: usize) {
    let now = Instant::now();
    let mut sender = initiator(now);
    let packet = ipv4_packet(size);
    let confirm = seal_one(&mut sender, &packet, now);
    let stride = confirm.len();
    let burst: Vec<u8> = (0..BURST)
        .flat_map(|_| seal_one(&mut sender, &packet, now))
        .collect();
    bencher
        .counter(BytesCount::new(size * BURST))
        .with_inputs(|| {
            let (mut router, _) = responder(now);
            assert_eq!(deliver(&mut router, &mut confirm.clone(), now), size);
            (router, burst.clone())
        })
        .bench_local_refs(|(router, messages)| {
            let mut delivered = 0;
            for message in messages.chunks_exact_mut(stride) {
                delivered += deliver(router, black_box(message), now);
            }
            assert_eq!(delivered, size * BURST);
        });
}
