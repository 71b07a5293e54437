//! Integration tests against the real kernel TUN driver.
//!
//! Each test body runs on its own thread that first moves into a fresh network namespace
//! (`unshare(CLONE_NEWNET)` is per thread), so nothing here can see or touch the host's
//! interfaces; child processes (`ip`) spawned from that thread inherit its namespace. The
//! namespace disappears with the thread. Tests skip (print and return) without root,
//! without /dev/net/tun, and, for the parts that need it, without iproute2's `ip`.
//! Addresses are from TEST-NET-1 (192.0.2.0/24, RFC 5737) and never leave the namespace.
// Linux only, as the crate under test.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, unshare};
use wg_tun::async_io::AsyncTun;
use wg_tun::{Tun, TunError, VNET_HDR_LEN, is_interface_gone};

const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// Runs `body` on a thread inside a new network namespace; skips when that is impossible.
fn in_netns(test: &'static str, body: impl FnOnce() + Send + 'static) {
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("skipping {test}: /dev/net/tun is absent");
        return;
    }
    let handle = thread::spawn(move || {
        if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
            eprintln!("skipping {test}: cannot create a network namespace ({e}); run as root");
            return;
        }
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
        {
            eprintln!("skipping {test}: cannot open /dev/net/tun ({e}); run as root");
            return;
        }
        body();
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

fn have_ip() -> bool {
    Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `ip ARGS` in the calling thread's network namespace.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_output(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads packets until `want` accepts one, or panics after 5 s.
fn read_until(tun: &Tun, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    tun.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65535];
    loop {
        match tun.read(&mut buf) {
            Ok(n) if want(&buf[..n]) => return buf[..n].to_vec(),
            Ok(_) => {} // IPv6 router solicitations, MLD reports, ...
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no matching packet within 5 s");
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64; // TTL
    p[9] = protocol;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn icmp_echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"wireguard-rs tun test");
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv4_packet(src, dst, 1, &icmp)
}

fn is_echo_reply(p: &[u8], to: Ipv4Addr, id: u16, seq: u16) -> bool {
    p.len() >= 28
        && p[0] >> 4 == 4
        && p[9] == 1
        && p[16..20] == to.octets()
        && p[20] == 0
        && p[24..26] == id.to_be_bytes()
        && p[26..28] == seq.to_be_bytes()
}

/// Creates `name` with MTU 1420, gives it 192.0.2.1/24 and brings it up.
fn addressed_tun(name: &str) -> Tun {
    let tun = Tun::create(name, 1420).unwrap();
    ip(&["addr", "add", "192.0.2.1/24", "dev", name]);
    tun.set_up(true).unwrap();
    tun
}

fn errno_name(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|i| i.downcast_ref::<wg_tun::InterfaceGone>())
    {
        Some(gone) => format!(
            "{:?} (wrapped, kind {:?})",
            nix::errno::Errno::from_raw(gone.errno),
            e.kind()
        ),
        None => format!("{e:?}"),
    }
}

#[test]
fn namespace_is_isolated() {
    in_netns("namespace_is_isolated", || {
        // Only loopback exists in a fresh namespace.
        assert!(nix::net::if_::if_nametoindex("lo").is_ok());
        let tun = Tun::create("wgt0", 1420).unwrap();
        if have_ip() {
            let links = ip_output(&["-o", "link"]);
            assert_eq!(links.lines().count(), 2, "{links}");
        }
        drop(tun);
    });
}

#[test]
fn create_sets_mtu_and_reads_it_back() {
    in_netns("create_sets_mtu_and_reads_it_back", || {
        let tun = Tun::create("wgt0", 1420).unwrap();
        assert_eq!(tun.name(), "wgt0");
        assert_eq!(tun.mtu().unwrap(), 1420);
        assert_eq!(
            tun.ifindex(),
            nix::net::if_::if_nametoindex("wgt0").unwrap()
        );
        assert!(tun.ifindex() > 1);
        assert!(!tun.is_multi_queue());
        let debug = format!("{tun:?}");
        assert!(
            debug.contains("\"wgt0\"") && debug.contains("ifindex"),
            "{debug}"
        );

        tun.set_mtu(1280).unwrap();
        assert_eq!(tun.mtu().unwrap(), 1280);
        tun.set_mtu(65535).unwrap();
        assert_eq!(tun.mtu().unwrap(), 65535);
        assert!(matches!(
            tun.set_mtu(67),
            Err(TunError::InvalidMtu { mtu: 67, .. })
        ));
        assert!(matches!(
            Tun::create("wgt1", 65536),
            Err(TunError::InvalidMtu { .. })
        ));
        assert!(
            nix::net::if_::if_nametoindex("wgt1").is_err(),
            "a refused MTU must not leave an interface behind"
        );

        // A 15-byte name is the longest allowed.
        let long = Tun::create("wg-0123456789ab", 1420).unwrap();
        assert_eq!(long.name().len(), 15);

        // Dropping the only queue of a non-persistent device deletes it.
        drop(tun);
        assert!(nix::net::if_::if_nametoindex("wgt0").is_err());
    });
}

#[test]
fn sixteen_byte_name_is_refused() {
    // Refused before any system call, so this needs neither root nor a namespace.
    let err = Tun::create("wg-0123456789abc", 1420).unwrap_err();
    assert!(matches!(err, TunError::InvalidName { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "interface name 'wg-0123456789abc' is invalid (it is longer than 15 bytes): at most 15 bytes, no '/', whitespace or ':'"
    );
    assert!(matches!(
        Tun::create("wg%d", 1420),
        Err(TunError::InvalidName { .. })
    ));
}

#[test]
fn link_up_and_down() {
    in_netns("link_up_and_down", || {
        if !have_ip() {
            eprintln!("skipping link_up_and_down: ip not installed");
            return;
        }
        let tun = Tun::create("wgt0", 1420).unwrap();
        let flags = |name: &str| ip_output(&["-o", "link", "show", name]);
        assert!(!flags("wgt0").contains(",UP"), "{}", flags("wgt0"));
        tun.set_up(true).unwrap();
        assert!(flags("wgt0").contains(",UP"), "{}", flags("wgt0"));
        tun.set_up(false).unwrap();
        assert!(!flags("wgt0").contains(",UP"), "{}", flags("wgt0"));
    });
}

#[test]
fn nonblocking_read_on_empty_device_would_block() {
    in_netns("nonblocking_read_on_empty_device_would_block", || {
        let tun = Tun::create("wgt0", 1420).unwrap();
        tun.set_nonblocking(true).unwrap();
        let flags = nix::fcntl::fcntl(tun.as_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        let mut buf = [0u8; 2048];
        let err = tun.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock, "{err}");
        assert!(!is_interface_gone(&err));
        tun.set_nonblocking(false).unwrap();
        let flags = nix::fcntl::fcntl(tun.as_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_NONBLOCK, 0);
    });
}

#[test]
fn write_while_link_is_down_fails_with_eio() {
    in_netns("write_while_link_is_down_fails_with_eio", || {
        let tun = Tun::create("wgt0", 1420).unwrap();
        let err = tun
            .write(&icmp_echo_request(PEER, LOCAL, 1, 1))
            .unwrap_err();
        eprintln!("write on a down TUN: {err:?}");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err:?}");
        assert!(!is_interface_gone(&err));
        // Not an IP packet: the kernel refuses it once the link is up.
        tun.set_up(true).unwrap();
        let err = tun.write(&[0u8; 20]).unwrap_err();
        eprintln!("write of a non-IP packet: {err:?}");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err:?}");
    });
}

#[test]
fn udp_datagram_routed_into_tun_is_read_back() {
    in_netns("udp_datagram_routed_into_tun_is_read_back", || {
        if !have_ip() {
            eprintln!("skipping udp_datagram_routed_into_tun_is_read_back: ip not installed");
            return;
        }
        let tun = addressed_tun("wgt0");
        let sock = UdpSocket::bind((LOCAL, 0)).unwrap();
        let sport = sock.local_addr().unwrap().port();
        sock.send_to(b"hello through the tunnel", (PEER, 4242))
            .unwrap();
        let p = read_until(&tun, |p| p.len() >= 28 && p[0] >> 4 == 4 && p[9] == 17);
        let ihl = usize::from(p[0] & 0x0f) * 4;
        assert_eq!(&p[12..16], &LOCAL.octets());
        assert_eq!(&p[16..20], &PEER.octets());
        assert_eq!(u16::from_be_bytes([p[ihl], p[ihl + 1]]), sport);
        assert_eq!(u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]), 4242);
        assert_eq!(&p[ihl + 8..], b"hello through the tunnel");
    });
}

#[test]
fn icmp_echo_written_into_tun_gets_a_reply() {
    in_netns("icmp_echo_written_into_tun_gets_a_reply", || {
        if !have_ip() {
            eprintln!("skipping icmp_echo_written_into_tun_gets_a_reply: ip not installed");
            return;
        }
        let tun = addressed_tun("wgt0");
        let request = icmp_echo_request(PEER, LOCAL, 0x5747, 7);
        assert_eq!(tun.write(&request).unwrap(), request.len());
        let reply = read_until(&tun, |p| is_echo_reply(p, PEER, 0x5747, 7));
        assert_eq!(&reply[12..16], &LOCAL.octets());
        assert_eq!(&reply[28..], b"wireguard-rs tun test");
    });
}

#[test]
fn offloaded_device_frames_every_packet_with_a_virtio_net_header() {
    in_netns(
        "offloaded_device_frames_every_packet_with_a_virtio_net_header",
        || {
            if !have_ip() {
                eprintln!("skipping: ip not installed");
                return;
            }
            let tun = Tun::create_offloaded("wgo0", 1420).unwrap();
            assert!(tun.vnet_hdr());
            // Every kernel since 2.6.27 has TSO on TUN; USO came with 6.2.
            assert!(tun.offloads().tso, "{:?}", tun.offloads());
            ip(&["addr", "add", "192.0.2.1/24", "dev", "wgo0"]);
            tun.set_up(true).unwrap();
            eprintln!("offloads: {:?}", tun.offloads());

            // A write must start with a header; an all-zero one means "complete packet".
            let mut framed = vec![0u8; VNET_HDR_LEN];
            framed.extend(icmp_echo_request(PEER, LOCAL, 0x5748, 9));
            assert_eq!(tun.write(&framed).unwrap(), framed.len());
            let reply = read_until(&tun, |p| {
                p.len() > VNET_HDR_LEN && is_echo_reply(&p[VNET_HDR_LEN..], PEER, 0x5748, 9)
            });
            // An ICMP reply is never segmented: GSO_NONE.
            assert_eq!(reply[1], 0, "gso_type of {:?}", &reply[..VNET_HDR_LEN]);

            // The adopted descriptor knows about the header too.
            let adopted = Tun::from_fd(tun.into_fd()).unwrap();
            assert!(adopted.vnet_hdr());
        },
    );
}

#[test]
fn deleted_interface_is_detected() {
    in_netns("deleted_interface_is_detected", || {
        if !have_ip() {
            eprintln!("skipping deleted_interface_is_detected: ip not installed");
            return;
        }
        let tun = Arc::new(addressed_tun("wgt0"));
        assert!(!tun.is_deleted());

        // A blocking read that is asleep in the kernel when the link goes away.
        let reader = {
            let tun = Arc::clone(&tun);
            thread::spawn(move || {
                let mut buf = vec![0u8; 65535];
                loop {
                    match tun.read(&mut buf) {
                        Ok(_) => continue, // IPv6 chatter
                        Err(e) => return e,
                    }
                }
            })
        };
        thread::sleep(Duration::from_millis(300));
        ip(&["link", "del", "wgt0"]);
        let in_flight = reader.join().unwrap();
        eprintln!(
            "blocking read in flight at deletion returned: {}",
            errno_name(&in_flight)
        );
        assert!(is_interface_gone(&in_flight), "{in_flight:?}");
        assert_eq!(in_flight.kind(), ErrorKind::NetworkDown);

        assert!(tun.is_deleted());
        let mut buf = [0u8; 2048];
        let err = tun.read(&mut buf).unwrap_err();
        eprintln!("read after deletion returned: {}", errno_name(&err));
        assert!(is_interface_gone(&err), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::NetworkDown);
        let err = tun
            .write(&icmp_echo_request(PEER, LOCAL, 1, 1))
            .unwrap_err();
        eprintln!("write after deletion returned: {}", errno_name(&err));
        assert!(is_interface_gone(&err), "{err:?}");
        tun.set_nonblocking(true).unwrap();
        let err = tun.read(&mut buf).unwrap_err();
        eprintln!(
            "nonblocking read after deletion returned: {}",
            errno_name(&err)
        );
        assert!(is_interface_gone(&err), "{err:?}");

        assert!(matches!(tun.mtu(), Err(TunError::InterfaceGone { .. })));
        assert!(matches!(
            tun.set_mtu(1420),
            Err(TunError::InterfaceGone { .. })
        ));
        assert!(matches!(
            tun.set_up(true),
            Err(TunError::InterfaceGone { .. })
        ));

        // A new interface with the same name does not make the old handle look alive.
        let again = Tun::create("wgt0", 1420).unwrap();
        assert!(tun.is_deleted());
        assert!(!again.is_deleted());
    });
}

#[test]
fn second_tun_with_the_same_name_is_refused() {
    in_netns("second_tun_with_the_same_name_is_refused", || {
        let first = Tun::create("wgt0", 1420).unwrap();
        let err = Tun::create("wgt0", 1420).unwrap_err();
        assert!(
            matches!(&err, TunError::AlreadyExists { name, .. } if name == "wgt0"),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "interface wgt0 already exists and is not a TUN device we can attach to"
            ),
            "{msg}"
        );
        assert!(msg.contains("in use by another process"), "{msg}");
        // A multi-queue attach to a single-queue device is refused the same way.
        assert!(matches!(
            Tun::create_multi_queue("wgt0", 1420, 2),
            Err(TunError::AlreadyExists { .. })
        ));
        // The first one is unharmed.
        assert!(!first.is_deleted());
        assert_eq!(first.mtu().unwrap(), 1420);
    });
}

#[test]
fn existing_non_tun_interface_is_refused() {
    in_netns("existing_non_tun_interface_is_refused", || {
        let err = Tun::create("lo", 1420).unwrap_err();
        assert!(
            matches!(&err, TunError::AlreadyExists { name, .. } if name == "lo"),
            "{err:?}"
        );
        eprintln!("{err}");
        if !have_ip() {
            eprintln!("skipping the veth case: ip not installed");
            return;
        }
        if Command::new("ip")
            .args([
                "link", "add", "wgv0", "type", "veth", "peer", "name", "wgv1",
            ])
            .status()
            .is_ok_and(|s| s.success())
        {
            let err = Tun::create("wgv0", 1420).unwrap_err();
            assert!(matches!(err, TunError::AlreadyExists { .. }), "{err:?}");
        } else {
            eprintln!("skipping the veth case: the kernel has no veth support");
        }
    });
}

#[test]
fn attaches_to_a_persistent_tun() {
    in_netns("attaches_to_a_persistent_tun", || {
        if !have_ip() {
            eprintln!("skipping attaches_to_a_persistent_tun: ip not installed");
            return;
        }
        ip(&["tuntap", "add", "dev", "wgp0", "mode", "tun"]);
        let index = nix::net::if_::if_nametoindex("wgp0").unwrap();
        let tun = Tun::create("wgp0", 1400).unwrap();
        assert_eq!(tun.ifindex(), index);
        assert_eq!(tun.mtu().unwrap(), 1400);
        drop(tun);
        // Persistent: still there after our descriptor is closed.
        assert_eq!(nix::net::if_::if_nametoindex("wgp0").unwrap(), index);
    });
}

#[test]
fn multi_queue() {
    in_netns("multi_queue", || {
        assert!(matches!(
            Tun::create_multi_queue("wgq0", 1420, 0),
            Err(TunError::InvalidQueueCount { queues: 0 })
        ));
        assert!(matches!(
            Tun::create_multi_queue("wgq0", 1420, 257),
            Err(TunError::InvalidQueueCount { .. })
        ));
        let queues = Tun::create_multi_queue("wgq0", 1420, 3).unwrap();
        assert_eq!(queues.len(), 3);
        let index = queues[0].ifindex();
        for q in &queues {
            assert_eq!(q.name(), "wgq0");
            assert_eq!(q.ifindex(), index);
            assert!(q.is_multi_queue());
        }
        let fourth = queues[1].clone_queue().unwrap();
        assert_eq!(fourth.ifindex(), index);
        assert_eq!(queues[0].mtu().unwrap(), 1420);
        // The interface lives while any queue is open.
        drop(queues);
        assert!(!fourth.is_deleted());
        assert_eq!(nix::net::if_::if_nametoindex("wgq0").unwrap(), index);

        let single = Tun::create("wgs0", 1420).unwrap();
        assert!(matches!(
            single.clone_queue(),
            Err(TunError::NotMultiQueue { .. })
        ));
        let one = Tun::create_multi_queue("wgs1", 1420, 1).unwrap();
        assert!(!one[0].is_multi_queue());
    });
}

#[test]
fn from_fd_round_trip() {
    in_netns("from_fd_round_trip", || {
        let tun = Tun::create("wgt0", 1420).unwrap();
        let (name, index) = (tun.name().to_owned(), tun.ifindex());
        let fd: OwnedFd = tun.into_fd();
        let raw = fd.as_raw_fd();
        let adopted = Tun::from_fd(fd).unwrap();
        assert_eq!(adopted.name(), name);
        assert_eq!(adopted.ifindex(), index);
        assert_eq!(adopted.as_raw_fd(), raw);
        assert_eq!(adopted.mtu().unwrap(), 1420);
        assert!(!adopted.is_multi_queue());
        assert!(!adopted.is_deleted());

        let mq = Tun::create_multi_queue("wgq0", 1420, 2).unwrap();
        let adopted_mq = Tun::from_fd(mq.into_iter().next().unwrap().into_fd()).unwrap();
        assert!(adopted_mq.is_multi_queue());

        // Not the TUN device at all.
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let err = Tun::from_fd(null).unwrap_err();
        assert!(matches!(err, TunError::NotTun { .. }), "{err:?}");
        // The TUN device, but never attached to an interface.
        let unattached: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap()
            .into();
        let err = Tun::from_fd(unattached).unwrap_err();
        assert!(
            matches!(&err, TunError::NotTun { reason } if reason.contains("not attached")),
            "{err:?}"
        );
        eprintln!("{err}");
    });
}

#[test]
fn from_fd_of_a_deleted_interface_is_refused() {
    in_netns("from_fd_of_a_deleted_interface_is_refused", || {
        if !have_ip() {
            eprintln!("skipping from_fd_of_a_deleted_interface_is_refused: ip not installed");
            return;
        }
        let tun = Tun::create("wgt0", 1420).unwrap();
        ip(&["link", "del", "wgt0"]);
        let err = Tun::from_fd(tun.into_fd()).unwrap_err();
        assert!(matches!(err, TunError::NotTun { .. }), "{err:?}");
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn async_tun_needs_a_runtime() {
    in_netns("async_tun_needs_a_runtime", || {
        let tun = Tun::create("wgt0", 1420).unwrap();
        let err = AsyncTun::new(tun).unwrap_err();
        assert!(err.to_string().contains("no tokio runtime"), "{err}");
    });
}

#[test]
fn async_send_and_recv() {
    in_netns("async_send_and_recv", || {
        if !have_ip() {
            eprintln!("skipping async_send_and_recv: ip not installed");
            return;
        }
        let tun = addressed_tun("wgt0");
        runtime().block_on(async move {
            let tun = AsyncTun::new(tun).unwrap();
            assert_eq!(tun.get_ref().name(), "wgt0");
            let mut buf = vec![0u8; 65535];
            for seq in 0..20u16 {
                let request = icmp_echo_request(PEER, LOCAL, 0x4157, seq);
                assert_eq!(tun.send(&request).await.unwrap(), request.len());
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                loop {
                    let n = tokio::time::timeout_at(deadline, tun.recv(&mut buf))
                        .await
                        .expect("no echo reply within 5 s")
                        .unwrap();
                    if is_echo_reply(&buf[..n], PEER, 0x4157, seq) {
                        break;
                    }
                }
            }
            // try_recv: a burst of replies comes out without waiting, then WouldBlock.
            for seq in 100..105u16 {
                let request = icmp_echo_request(PEER, LOCAL, 0x4157, seq);
                tun.send(&request).await.unwrap();
            }
            let mut replies = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while replies < 5 {
                let n = tokio::time::timeout_at(deadline, tun.recv(&mut buf))
                    .await
                    .expect("no echo reply within 5 s")
                    .unwrap();
                replies += usize::from(buf[..n].len() >= 28 && buf[20] == 0);
                loop {
                    match tun.try_recv(&mut buf) {
                        Ok(n) => replies += usize::from(buf[..n].len() >= 28 && buf[20] == 0),
                        Err(e) => {
                            assert_eq!(e.kind(), ErrorKind::WouldBlock);
                            break;
                        }
                    }
                }
            }
            assert_eq!(replies, 5);
            let back = tun.into_inner();
            let mut small = [0u8; 64];
            // Still non-blocking after leaving the reactor.
            loop {
                match back.read(&mut small) {
                    Ok(_) => continue,
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::WouldBlock);
                        break;
                    }
                }
            }
        });
    });
}

#[test]
fn async_recv_ends_when_the_interface_is_deleted() {
    in_netns("async_recv_ends_when_the_interface_is_deleted", || {
        if !have_ip() {
            eprintln!("skipping async_recv_ends_when_the_interface_is_deleted: ip not installed");
            return;
        }
        let tun = addressed_tun("wgt0");
        // The deleting `ip` must run in this namespace: spawn it from this thread.
        runtime().block_on(async move {
            let tun = AsyncTun::new(tun).unwrap();
            let delete = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                ip(&["link", "del", "wgt0"]);
            };
            let receive = async {
                let mut buf = vec![0u8; 65535];
                loop {
                    match tun.recv(&mut buf).await {
                        Ok(_) => continue, // IPv6 chatter before the deletion
                        Err(e) => return e,
                    }
                }
            };
            let ((), err) = tokio::time::timeout(Duration::from_secs(5), async {
                tokio::join!(delete, receive)
            })
            .await
            .expect("recv did not return within 5 s of the interface being deleted");
            eprintln!("async recv after deletion returned: {}", errno_name(&err));
            assert!(is_interface_gone(&err), "{err:?}");
            assert_eq!(err.kind(), ErrorKind::NetworkDown);
            assert!(tun.get_ref().is_deleted());

            let err = tokio::time::timeout(
                Duration::from_secs(5),
                tun.send(&icmp_echo_request(PEER, LOCAL, 1, 1)),
            )
            .await
            .expect("send did not return")
            .unwrap_err();
            eprintln!("async send after deletion returned: {}", errno_name(&err));
            assert!(is_interface_gone(&err), "{err:?}");
        });
    });
}
