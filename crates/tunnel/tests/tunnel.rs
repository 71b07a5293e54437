//! The tunnel through its public API, without root: a `socketpair(AF_UNIX, SOCK_DGRAM)`
//! stands in for the TUN device (each datagram one packet), the UDP sockets are real
//! (loopback).
// The tunnel takes a descriptor: Unix only (see the crate doc).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use wg_tunnel::{Framing, PublicKey, Tunnel, TunnelError};
use wg_uapi::SecretKey;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn public(private: [u8; 32]) -> PublicKey {
    *wg_keyd::config::identity_of(&SecretKey::from_bytes(private)).public_key()
}

/// A fake TUN: the tunnel's end and the app's end (reads time out).
fn fake_tun() -> (std::os::fd::OwnedFd, UnixDatagram) {
    let (tun, app) = UnixDatagram::pair().unwrap();
    app.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (tun.into(), app)
}

fn start(settings: &str) -> (Tunnel, UnixDatagram) {
    let (tun, app) = fake_tun();
    (Tunnel::start(tun, Framing::Raw, settings).unwrap(), app)
}

/// The value of the first `key=` line.
fn value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

fn port_of(tunnel: &Tunnel) -> u16 {
    value(&tunnel.get().unwrap(), "listen_port")
        .unwrap()
        .parse()
        .unwrap()
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `port` can be bound (IPv4 UDP) right now.
fn port_is_free(port: u16) -> bool {
    UdpSocket::bind(("0.0.0.0", port)).is_ok()
}

fn uapi_errno(result: Result<impl std::fmt::Debug, TunnelError>) -> i32 {
    match result {
        Err(TunnelError::Uapi { errno, .. }) => errno,
        other => panic!("expected a UAPI error, got {other:?}"),
    }
}

#[test]
fn settings_errors_are_the_daemons_errnos_and_change_nothing() {
    let (tunnel, _app) = start("listen_port=0\n");
    let before = tunnel.get().unwrap();
    // A line without `=`: EPROTO.
    assert_eq!(uapi_errno(tunnel.set("nonsense\n")), 71);
    // A bad key, an unknown key, a port out of range, a peer key before public_key: EINVAL.
    assert_eq!(uapi_errno(tunnel.set("private_key=zz\n")), 22);
    assert_eq!(uapi_errno(tunnel.set("no_such_key=1\n")), 22);
    assert_eq!(uapi_errno(tunnel.set("listen_port=65536\n")), 22);
    assert_eq!(uapi_errno(tunnel.set("endpoint=192.0.2.1:1\n")), 22);
    // A line over the limit: EIO.
    let long = format!("private_key={}\n", "a".repeat(5000));
    assert_eq!(uapi_errno(tunnel.set(&long)), 5);
    // A request that fails half-way applies nothing.
    let half = format!(
        "private_key={}\npublic_key={}\nallowed_ip=10.0.0.0/33\n",
        hex(&[7; 32]),
        hex(public([8; 32]).as_bytes())
    );
    assert_eq!(uapi_errno(tunnel.set(&half)), 22);
    assert_eq!(*tunnel.get().unwrap(), *before);
    // The same at start.
    let (tun, _app2) = fake_tun();
    assert_eq!(
        uapi_errno(Tunnel::start(tun, Framing::Raw, "private_key=00\n")),
        22
    );
    // The error never shows a key.
    let secret = hex(&[9; 32]);
    let err = tunnel
        .set(&format!("private_key={secret}\nlisten_port=x\n"))
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains(&secret));
    assert_eq!(err.errno(), Some(22));
}

#[test]
fn set_and_get_round_trip_every_setting() {
    let port = free_port();
    let private = [3u8; 32];
    let peer = public([4; 32]);
    let psk = hex(&[5; 32]);
    let (tunnel, _app) = start(&format!(
        "set=1\nprivate_key={}\nlisten_port={port}\n",
        hex(&private)
    ));
    tunnel
        .set(&format!(
            "public_key={}\npreshared_key={psk}\nendpoint=192.0.2.4:51820\n\
             persistent_keepalive_interval=25\nallowed_ip=10.0.0.4/32\nallowed_ip=fd00::/64\n\n",
            hex(peer.as_bytes())
        ))
        .unwrap();
    let text = tunnel.get().unwrap();
    // The daemon's clamped key, the bound port, the peer as set.
    let mut clamped = private;
    clamped[0] &= 248;
    clamped[31] = (clamped[31] & 127) | 64;
    let expected_head = format!(
        "private_key={}\nlisten_port={port}\npublic_key={}\npreshared_key={psk}\n\
         protocol_version=1\nendpoint=192.0.2.4:51820\nlast_handshake_time_sec=0\n\
         last_handshake_time_nsec=0\ntx_bytes=",
        hex(&clamped),
        hex(peer.as_bytes())
    );
    assert!(text.starts_with(&expected_head), "{}", *text);
    assert!(
        text.ends_with(
            "persistent_keepalive_interval=25\nallowed_ip=10.0.0.4/32\nallowed_ip=fd00::/64\n"
        ),
        "{}",
        *text
    );
    assert!(!text.contains("errno"));
    let stats = tunnel.peer_stats().unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].public_key, peer);
    assert_eq!(stats[0].endpoint, Some("192.0.2.4:51820".parse().unwrap()));
    // replace_allowed_ips and remove, as in wg(8).
    tunnel
        .set(&format!(
            "public_key={}\nreplace_allowed_ips=true\nallowed_ip=10.9.0.0/16\n",
            hex(peer.as_bytes())
        ))
        .unwrap();
    let text = tunnel.get().unwrap();
    assert_eq!(value(&text, "allowed_ip").as_deref(), Some("10.9.0.0/16"));
    assert!(!text.contains("fd00::"));
    tunnel
        .set(&format!(
            "public_key={}\nremove=true\n",
            hex(peer.as_bytes())
        ))
        .unwrap();
    assert!(tunnel.peer_stats().unwrap().is_empty());
    tunnel.stop().unwrap();
}

#[test]
fn a_listen_port_in_use_is_eaddrinuse_and_a_free_one_rebinds() {
    let (tunnel, _app) = start("");
    let first = port_of(&tunnel);
    assert!(!port_is_free(first));
    let taken = UdpSocket::bind("0.0.0.0:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    assert_eq!(
        uapi_errno(tunnel.set(&format!("listen_port={taken_port}\n"))),
        98
    );
    assert_eq!(port_of(&tunnel), first);
    drop(taken);
    tunnel.set(&format!("listen_port={taken_port}\n")).unwrap();
    assert_eq!(port_of(&tunnel), taken_port);
    assert!(port_is_free(first), "the old sockets are closed");
    // Starting on a port in use fails the same way.
    let (tun, _app2) = fake_tun();
    assert_eq!(
        uapi_errno(Tunnel::start(
            tun,
            Framing::Raw,
            &format!("listen_port={taken_port}\n")
        )),
        98
    );
}

#[test]
fn stop_and_drop_join_the_thread_and_close_everything() {
    let (tunnel, app) = start("");
    let port = port_of(&tunnel);
    assert!(tunnel.is_running());
    tunnel.stop().unwrap();
    assert!(port_is_free(port));
    assert!(app.send(&[0x45]).is_err(), "the TUN end is closed");

    let (tunnel, app) = start("");
    let port = port_of(&tunnel);
    drop(tunnel);
    assert!(port_is_free(port));
    assert!(app.send(&[0x45]).is_err(), "the TUN end is closed");
}

/// A datagram socket pair never reports the peer's close; a sequenced-packet pair does
/// (a read returns 0), as a TUN device whose interface is gone fails its reads.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn a_tunnel_whose_tun_closes_stops_and_answers_stopped() {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::time::Instant;
    let (tun, app) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::empty(),
    )
    .unwrap();
    let tunnel = Tunnel::start(tun, Framing::Raw, "").unwrap();
    let port = port_of(&tunnel);
    drop(app);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tunnel.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!tunnel.is_running());
    assert!(matches!(tunnel.get(), Err(TunnelError::Stopped)));
    assert!(matches!(tunnel.set(""), Err(TunnelError::Stopped)));
    assert!(matches!(tunnel.peer_stats(), Err(TunnelError::Stopped)));
    assert!(matches!(tunnel.bump_sockets(), Err(TunnelError::Stopped)));
    assert!(matches!(tunnel.socket_fds(), Err(TunnelError::Stopped)));
    assert!(matches!(
        tunnel.set_roaming(false),
        Err(TunnelError::Stopped)
    ));
    assert!(matches!(tunnel.stop(), Err(TunnelError::Stopped)));
    assert!(port_is_free(port));
}

#[test]
fn bump_sockets_keeps_the_port_and_changes_the_descriptors() {
    let (tunnel, _app) = start("");
    let port = port_of(&tunnel);
    let (v4, v6) = tunnel.socket_fds().unwrap();
    assert!(v4.is_some());
    tunnel.bump_sockets().unwrap();
    let (new_v4, new_v6) = tunnel.socket_fds().unwrap();
    assert_eq!(port_of(&tunnel), port);
    assert!(new_v4.is_some());
    assert_ne!(new_v4, v4);
    if v6.is_some() {
        assert_ne!(new_v6, v6);
    }
    assert!(!port_is_free(port));
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn fwmark_is_set_or_refused_as_the_daemon_does() {
    let (tunnel, _app) = start("");
    match tunnel.set("fwmark=51820\n") {
        // With CAP_NET_ADMIN the mark is set and shown.
        Ok(()) => assert_eq!(
            value(&tunnel.get().unwrap(), "fwmark").as_deref(),
            Some("51820")
        ),
        // Without it, EPERM: the daemon's EACCES answer ("Permission denied").
        Err(e) => {
            assert_eq!(uapi_errno(Err::<(), _>(e)), 13);
            assert_eq!(value(&tunnel.get().unwrap(), "fwmark"), None);
        }
    }
}

// ----- two tunnels -----

/// An IPv4 UDP packet from `src` to `dst` with `payload`.
fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let mut sum: u32 = p[..20]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5000u16.to_be_bytes());
    p[24..26].copy_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

fn af_inet_header() -> [u8; 4] {
    (libc::AF_INET as u32).to_be_bytes()
}

struct Pair {
    a: Tunnel,
    b: Tunnel,
    a_app: UnixDatagram,
    b_app: UnixDatagram,
    a_pub: PublicKey,
    b_pub: PublicKey,
}

/// A (10.0.0.1, framing `a_framing`) and B (10.0.0.2, raw) on loopback, each the
/// other's peer.
fn pair(a_framing: Framing) -> Pair {
    let (a_priv, b_priv) = ([0x11u8; 32], [0x22u8; 32]);
    let (a_pub, b_pub) = (public(a_priv), public(b_priv));
    let (tun, a_app) = fake_tun();
    let a = Tunnel::start(
        tun,
        a_framing,
        &format!("private_key={}\nlisten_port=0\n", hex(&a_priv)),
    )
    .unwrap();
    let a_port = port_of(&a);
    let (tun, b_app) = fake_tun();
    let b = Tunnel::start(
        tun,
        Framing::Raw,
        &format!(
            "private_key={}\nlisten_port=0\npublic_key={}\nendpoint=127.0.0.1:{a_port}\n\
             allowed_ip=10.0.0.1/32\n",
            hex(&b_priv),
            hex(a_pub.as_bytes())
        ),
    )
    .unwrap();
    let b_port = port_of(&b);
    a.set(&format!(
        "public_key={}\nendpoint=127.0.0.1:{b_port}\nallowed_ip=10.0.0.2/32\n",
        hex(b_pub.as_bytes())
    ))
    .unwrap();
    Pair {
        a,
        b,
        a_app,
        b_app,
        a_pub,
        b_pub,
    }
}

fn recv(app: &UnixDatagram) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let n = app.recv(&mut buf).expect("a packet within 5 s");
    buf.truncate(n);
    buf
}

#[test]
fn two_tunnels_carry_packets_both_ways_and_take_new_allowed_ips_at_run_time() {
    let p = pair(Framing::Raw);
    // A -> B: the first packet waits for the handshake, then arrives unchanged.
    let out = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"hello from A");
    p.a_app.send(&out).unwrap();
    assert_eq!(recv(&p.b_app), out);
    // B -> A.
    let back = ipv4([10, 0, 0, 2], [10, 0, 0, 1], &[0xab; 1200]);
    p.b_app.send(&back).unwrap();
    assert_eq!(recv(&p.a_app), back);

    // 10.0.2.0/24 is not routed to B yet: nothing arrives.
    let far = ipv4([10, 0, 0, 1], [10, 0, 2, 5], b"routed later");
    p.a_app.send(&far).unwrap();
    p.b_app
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 100];
    assert!(p.b_app.recv(&mut buf).is_err(), "no route yet");
    p.b_app
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    p.a.set(&format!(
        "public_key={}\nallowed_ip=10.0.2.0/24\n",
        hex(p.b_pub.as_bytes())
    ))
    .unwrap();
    p.a_app.send(&far).unwrap();
    assert_eq!(recv(&p.b_app), far);

    // Both sides count it and know the handshake.
    let a_stats = p.a.peer_stats().unwrap();
    let b_stats = p.b.peer_stats().unwrap();
    assert_eq!(a_stats[0].public_key, p.b_pub);
    assert_eq!(b_stats[0].public_key, p.a_pub);
    for s in [&a_stats[0], &b_stats[0]] {
        assert!(s.last_handshake.is_some(), "{s:?}");
        assert!(s.rx_bytes > 0 && s.tx_bytes > 0, "{s:?}");
    }
    assert!(value(&p.a.get().unwrap(), "last_handshake_time_sec").is_some_and(|v| v != "0"));
    p.a.stop().unwrap();
    p.b.stop().unwrap();
}

#[test]
fn the_af_header_framing_carries_packets_to_a_raw_peer_and_back() {
    let p = pair(Framing::AfHeader);
    let packet = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"utun");
    // Garbage headers are dropped, the right one passes.
    p.a_app.send(&[0, 0, 0, 99, 0x45, 0]).unwrap();
    p.a_app.send(&[0, 0]).unwrap();
    let framed = [&af_inet_header()[..], &packet].concat();
    p.a_app.send(&framed).unwrap();
    assert_eq!(recv(&p.b_app), packet);
    let back = ipv4([10, 0, 0, 2], [10, 0, 0, 1], b"raw to utun");
    p.b_app.send(&back).unwrap();
    assert_eq!(recv(&p.a_app), [&af_inet_header()[..], &back].concat());
}

#[test]
fn roaming_off_keeps_the_configured_endpoint_and_on_follows_the_peer() {
    let p = pair(Framing::Raw);
    p.b.set_roaming(false).unwrap();
    let old: SocketAddr = format!("127.0.0.1:{}", port_of(&p.a)).parse().unwrap();
    let packet = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"before");
    p.a_app.send(&packet).unwrap();
    assert_eq!(recv(&p.b_app), packet);
    // A moves to another port: B takes its packets but keeps the configured endpoint.
    let new_port = free_port();
    p.a.set(&format!("listen_port={new_port}\n")).unwrap();
    let moved: SocketAddr = format!("127.0.0.1:{new_port}").parse().unwrap();
    let packet = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"moved, roaming off");
    p.a_app.send(&packet).unwrap();
    assert_eq!(recv(&p.b_app), packet);
    assert_eq!(p.b.peer_stats().unwrap()[0].endpoint, Some(old));
    // Roaming on: the next packet moves B's endpoint, and B's answer reaches A.
    p.b.set_roaming(true).unwrap();
    let packet = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"moved, roaming on");
    p.a_app.send(&packet).unwrap();
    assert_eq!(recv(&p.b_app), packet);
    assert_eq!(p.b.peer_stats().unwrap()[0].endpoint, Some(moved));
    let back = ipv4([10, 0, 0, 2], [10, 0, 0, 1], b"to the new port");
    p.b_app.send(&back).unwrap();
    assert_eq!(recv(&p.a_app), back);
}
