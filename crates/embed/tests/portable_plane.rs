//! The portable data plane (`wg_datad::serve_portable`, what macOS, FreeBSD and NetBSD
//! run) on Linux: two nodes in one process, each keyd's service and a portable plane
//! joined by in-memory channels (as `wg-embed` joins them), configured by UAPI requests.
//! A `SOCK_SEQPACKET` socket pair stands in for each TUN, framed with the 4-byte
//! address-family header: node A with macOS's numbers (`AF_INET6` = 30), node B with
//! FreeBSD's (28), so a packet crossing is re-framed with the other OS's family. UDP on
//! 127.0.0.1 only. Every wait has a timeout; nothing here measures speed.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::os::unix::net::UnixDatagram as StdUnixDatagram;
use std::time::Duration;

use tokio::net::UnixDatagram;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use wg_datad::{DatadError, Exit, Startup, TunFraming};
use wg_ipc::Channel;
use wg_ipc::messages::{DatadToMonitor, KeydToMonitor, MonitorToDatad, MonitorToKeyd};
use wg_keyd::{KeydStartup, UapiRequest, UapiSource};
use wg_platform::Os;
use wg_platform::af::AfHeader;
use wg_uapi::{Response, SecretKey};

/// How long any one step may take before the test fails.
const STEP: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, f).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: nothing within {STEP:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One node: keyd's service and a portable data plane, with the far ends of their
/// channels and of the TUN.
struct Node {
    uapi: mpsc::Sender<UapiRequest>,
    /// The application's end of the TUN.
    app: UnixDatagram,
    /// The family numbers of the node's OS.
    af: AfHeader,
    port: u16,
    public: String,
    datad: JoinHandle<Result<Exit, DatadError>>,
    /// The monitor's end of its channel to the data plane.
    monitor: Channel,
    _keyd: JoinHandle<()>,
    _keyd_monitor: JoinHandle<()>,
}

/// Starts a node whose TUN frames packets as `os` does. Call inside the runtime.
fn node(name: &str, private: [u8; 32], os: Os) -> Node {
    let (plane_tun, app_tun) = wg_ipc::seqpacket_pair().unwrap();
    let app = UnixDatagram::from_std(StdUnixDatagram::from(app_tun)).unwrap();
    let udp4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp4.local_addr().unwrap().port();
    let (keyd_datad, datad_keyd) = Channel::memory_pair();
    let (monitor_keyd, keyd_monitor) = Channel::memory_pair();
    let (monitor_datad, datad_monitor) = Channel::memory_pair();
    let (uapi, requests) = mpsc::channel(8);
    let interface = name.to_owned();
    let keyd = tokio::spawn(async move {
        let served = wg_keyd::serve(KeydStartup {
            interface,
            uapi: UapiSource::InProcess(requests),
            datad: keyd_datad,
            monitor: keyd_monitor,
            listen_port: port,
        })
        .await;
        if let Err(e) = served {
            eprintln!("keyd stopped: {e}");
        }
    });
    // The monitor's side for keyd: the sockets never change here, so any reconfiguration
    // is answered with the port already bound.
    let keyd_monitor = tokio::spawn(async move {
        while let Ok(m) = monitor_keyd.recv::<KeydToMonitor>().await {
            if let KeydToMonitor::Reconfigure { .. } = m.msg {
                let reply = MonitorToKeyd::Reconfigured { port, errno: 0 };
                if monitor_keyd.send(&reply, &[]).await.is_err() {
                    return;
                }
            }
        }
    });
    let datad = tokio::spawn(wg_datad::serve_portable(
        Startup {
            tun: plane_tun,
            udp4,
            udp6: None,
            udp_gso: false,
            crypto_threads: 0,
            keyd: datad_keyd,
            monitor: Some(datad_monitor),
            lockdown: None,
        },
        TunFraming::AfHeader(os),
    ));
    let public = *wg_keyd::config::identity_of(&SecretKey::from_bytes(private)).public_key();
    Node {
        uapi,
        app,
        af: AfHeader::for_os(os).unwrap(),
        port,
        public: hex(public.as_bytes()),
        datad,
        monitor: monitor_datad,
        _keyd: keyd,
        _keyd_monitor: keyd_monitor,
    }
}

impl Node {
    async fn uapi(&self, text: &str) -> Response {
        let request = wg_uapi::parse_request(text.as_bytes()).unwrap();
        let (reply, answer) = oneshot::channel();
        within(
            "sending a UAPI request",
            self.uapi.send(UapiRequest { request, reply }),
        )
        .await
        .unwrap();
        within("keyd's UAPI answer", answer).await.unwrap()
    }

    async fn set(&self, text: &str) {
        match self.uapi(&format!("set=1\n{text}\n")).await {
            Response::SetOk => {}
            other => panic!("set refused: {other:?}"),
        }
    }

    async fn get(&self) -> String {
        match self.uapi("get=1\n\n").await {
            Response::Get(text) => text.to_string(),
            other => panic!("get refused: {other:?}"),
        }
    }

    /// Writes one frame into the node's TUN, as the kernel would hand it to the plane.
    async fn write_frame(&self, frame: &[u8]) {
        let sent = within("writing to the TUN", self.app.send(frame))
            .await
            .unwrap();
        assert_eq!(sent, frame.len());
    }

    /// Writes `packet` behind this OS's header for its IP version.
    async fn write_packet(&self, packet: &[u8]) {
        let header = self.af.encode(packet).unwrap();
        self.write_frame(&[&header[..], packet].concat()).await;
    }

    /// The next frame the plane wrote to the TUN.
    async fn read_frame(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 70_000];
        let n = within("a frame from the TUN", self.app.recv(&mut buf))
            .await
            .unwrap();
        buf.truncate(n);
        buf
    }
}

/// A (macOS framing, 10.0.0.1, fd00::1) and B (FreeBSD framing, 10.0.0.2, fd00::2), each
/// the other's peer on loopback.
async fn two_nodes() -> (Node, Node) {
    let a = node("wga", [0x11; 32], Os::MacOs);
    let b = node("wgb", [0x22; 32], Os::FreeBsd);
    a.set(&format!(
        "private_key={}\npublic_key={}\nendpoint=127.0.0.1:{}\n\
         allowed_ip=10.0.0.2/32\nallowed_ip=fd00::2/128\n",
        hex(&[0x11; 32]),
        b.public,
        b.port
    ))
    .await;
    b.set(&format!(
        "private_key={}\npublic_key={}\nendpoint=127.0.0.1:{}\n\
         allowed_ip=10.0.0.1/32\nallowed_ip=fd00::1/128\n",
        hex(&[0x22; 32]),
        a.public,
        a.port
    ))
    .await;
    (a, b)
}

/// The Internet checksum of a one's-complement sum: folded and inverted.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// An IPv4 UDP packet from `src` to `dst` with `payload`, its header checksum right.
fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let checksum = fold(sum16(&p[..20]));
    p[10..12].copy_from_slice(&checksum.to_be_bytes());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5000u16.to_be_bytes());
    p[24..26].copy_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// An IPv6 UDP packet from `src` to `dst` with `payload`, its UDP checksum right.
fn ipv6(src: [u16; 8], dst: [u16; 8], payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = vec![0u8; 40 + udp_len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    for (i, (s, d)) in src.iter().zip(&dst).enumerate() {
        p[8 + 2 * i..10 + 2 * i].copy_from_slice(&s.to_be_bytes());
        p[24 + 2 * i..26 + 2 * i].copy_from_slice(&d.to_be_bytes());
    }
    p[40..42].copy_from_slice(&4000u16.to_be_bytes());
    p[42..44].copy_from_slice(&5000u16.to_be_bytes());
    p[44..46].copy_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
    p[48..].copy_from_slice(payload);
    // Pseudo-header (addresses, length, next header) and the UDP datagram.
    let length = u32::try_from(udp_len).unwrap();
    let sum = sum16(&p[8..40]) + (length >> 16) + (length & 0xffff) + 17 + sum16(&p[40..]);
    let checksum = match fold(sum) {
        0 => 0xffff,
        c => c,
    };
    p[46..48].copy_from_slice(&checksum.to_be_bytes());
    p
}

const A6: [u16; 8] = [0xfd00, 0, 0, 0, 0, 0, 0, 1];
const B6: [u16; 8] = [0xfd00, 0, 0, 0, 0, 0, 0, 2];

fn framed(family: u32, packet: &[u8]) -> Vec<u8> {
    [&family.to_be_bytes()[..], packet].concat()
}

/// The value of the first `key=` line of a `get` answer.
fn value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn two_portable_planes_carry_ipv4_and_ipv6_reframed_for_each_os() {
    let (a, b) = two_nodes().await;
    assert_eq!(a.af.inet6, 30, "node A frames as macOS");
    assert_eq!(b.af.inet6, 28, "node B frames as FreeBSD");

    // A -> B, IPv4: the first packet waits for the handshake, then arrives unchanged
    // behind AF_INET.
    let out = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"hello from A");
    a.write_packet(&out).await;
    assert_eq!(b.read_frame().await, framed(2, &out));

    // B -> A, IPv4.
    let back = ipv4([10, 0, 0, 2], [10, 0, 0, 1], &[0xab; 1200]);
    b.write_packet(&back).await;
    assert_eq!(a.read_frame().await, framed(2, &back));

    // A -> B, IPv6: written behind macOS's AF_INET6 (30), read behind FreeBSD's (28).
    let out6 = ipv6(A6, B6, b"hello over IPv6");
    a.write_frame(&framed(30, &out6)).await;
    assert_eq!(b.read_frame().await, framed(28, &out6));

    // B -> A, IPv6: the other way round.
    let back6 = ipv6(B6, A6, &[0x5a; 700]);
    b.write_frame(&framed(28, &back6)).await;
    assert_eq!(a.read_frame().await, framed(30, &back6));

    // keyd's `get` (its statistics come from the data plane) knows the session.
    for node in [&a, &b] {
        let text = node.get().await;
        let handshake = value(&text, "last_handshake_time_sec");
        assert!(handshake.is_some_and(|s| s > 0), "no handshake in {text}");
        assert!(value(&text, "rx_bytes").is_some_and(|n| n > 0), "{text}");
        assert!(value(&text, "tx_bytes").is_some_and(|n| n > 0), "{text}");
    }
    assert!(!a.datad.is_finished() && !b.datad.is_finished());
}

#[tokio::test]
async fn frames_with_a_wrong_family_are_dropped_and_the_plane_keeps_running() {
    let (a, b) = two_nodes().await;
    let v4 = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"dropped");
    let v6 = ipv6(A6, B6, b"dropped too");
    // FreeBSD's AF_INET6 on a macOS TUN, AF_INET6 in front of IPv4, AF_INET in front of
    // IPv6, a family nobody has, and a frame too short for its header.
    for bad in [
        framed(28, &v6),
        framed(30, &v4),
        framed(2, &v6),
        framed(0xdead_beef, &v4),
        vec![0, 0, 0],
        framed(2, &[]),
    ] {
        a.write_frame(&bad).await;
    }
    // MTUs out of range are clamped, not fatal.
    for mtu in [0, u32::MAX] {
        within(
            "telling the data plane the MTU",
            a.monitor.send(&MonitorToDatad::Mtu { mtu }, &[]),
        )
        .await
        .unwrap();
    }
    // The good frame behind them is the first thing B sees.
    let good = ipv4([10, 0, 0, 1], [10, 0, 0, 2], b"after the bad frames");
    a.write_packet(&good).await;
    assert_eq!(b.read_frame().await, framed(2, &good));
    assert!(!a.datad.is_finished(), "the plane stopped");
    // And it still serves both ways.
    let back = ipv4([10, 0, 0, 2], [10, 0, 0, 1], b"still there");
    b.write_packet(&back).await;
    assert_eq!(a.read_frame().await, framed(2, &back));
}

#[tokio::test]
async fn the_end_of_the_tun_tells_the_monitor_the_interface_is_gone() {
    // keyd and the channels stay up: only the TUN ends.
    let c = node("wgc", [0x33; 32], Os::NetBsd);
    drop(c.app);
    let exit = within("the data plane's end", c.datad).await.unwrap();
    assert!(matches!(exit, Ok(Exit::InterfaceGone)), "{exit:?}");
    let told = within("the monitor's message", c.monitor.recv::<DatadToMonitor>())
        .await
        .unwrap();
    assert!(
        matches!(told.msg, DatadToMonitor::InterfaceGone),
        "{told:?}"
    );
}
