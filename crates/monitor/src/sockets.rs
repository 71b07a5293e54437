//! The UDP sockets: one IPv4 and (where the host has IPv6) one IPv6 socket on the same port,
//! as wireguard-go binds them, with an optional firewall mark; and keyd's `Reconfigure`
//! request on them, decided without I/O ([`SocketOwner::handle_reconfigure`]) for both the
//! monitor and the in-process mode (`wg-embed`).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

use socket2::{Domain, Protocol, Socket, Type};
use wg_ipc::messages::{MonitorToDatad, MonitorToKeyd};

/// The bound sockets of the listen port.
#[derive(Debug)]
pub struct UdpSockets {
    /// IPv4 socket.
    pub v4: UdpSocket,
    /// IPv6 socket (`IPV6_V6ONLY`), absent when the host has no IPv6.
    pub v6: Option<UdpSocket>,
    /// The bound port.
    pub port: u16,
    /// The batching offloads these sockets have.
    pub offload: UdpOffload,
}

/// UDP batching offloads: wanted (from the command line) or in effect (probed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpOffload {
    /// Segmentation (`UDP_SEGMENT`, Linux 4.18): one `sendmsg` carries up to 64 datagrams
    /// of one size to one destination.
    pub gso: bool,
    /// Receive coalescing (`UDP_GRO`, Linux 5.0): one `recvmsg` returns a run of datagrams
    /// from one source, all of one size but the last.
    pub gro: bool,
}

impl Default for UdpOffload {
    fn default() -> Self {
        UdpOffload {
            gso: true,
            gro: true,
        }
    }
}

/// Socket buffer size asked for (wireguard-go asks for 7 MiB as well).
const SOCKET_BUFFER: usize = 7 << 20;

fn socket(domain: Domain, fwmark: u32, wanted: UdpOffload) -> io::Result<(Socket, UdpOffload)> {
    // socket2 makes every new socket close-on-exec (atomically where the OS can).
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if domain == Domain::IPV6 {
        s.set_only_v6(true)?;
    }
    if fwmark != 0 {
        set_mark(&s, fwmark)?;
    }
    let offload = buffers_and_offloads(&s, wanted);
    Ok((s, offload))
}

/// Room for bursts, and the batching offloads that could be had.
#[cfg(target_os = "linux")]
fn buffers_and_offloads(s: &Socket, wanted: UdpOffload) -> UdpOffload {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    // Room for bursts: one segmented send or coalesced receive is up to 64 KiB, and the
    // default buffers (about 200 KiB) overflow while the data plane is busy with the last
    // burst, which TCP inside the tunnel pays for with retransmissions. The *FORCE options
    // (CAP_NET_ADMIN, which the monitor has) go past net.core.[rw]mem_max; without them
    // the kernel caps the plain options there.
    if setsockopt(s, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(s, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(s, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(s, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    // A kernel without them refuses the option (ENOPROTOOPT): run without, just slower.
    let gro = wanted.gro && setsockopt(s, sockopt::UdpGroSegment, &true).is_ok();
    let gso = wanted.gso && getsockopt(s, sockopt::UdpGsoSegment).is_ok();
    UdpOffload { gso, gro }
}

/// Room for bursts, as much of [`SOCKET_BUFFER`] as the kernel grants; these systems have
/// no UDP segmentation or coalescing.
#[cfg(not(target_os = "linux"))]
fn buffers_and_offloads(s: &Socket, _wanted: UdpOffload) -> UdpOffload {
    largest_buffer(|size| s.set_recv_buffer_size(size));
    largest_buffer(|size| s.set_send_buffer_size(size));
    UdpOffload {
        gso: false,
        gro: false,
    }
}

/// The BSD kernels refuse a buffer above their limit (`kern.ipc.maxsockbuf`, NetBSD's
/// `kern.sbmax`: 256 KiB by default) with `ENOBUFS` instead of capping it as Linux does:
/// halve the size until one is taken, down to 64 KiB (below that the default stays).
#[cfg(not(target_os = "linux"))]
fn largest_buffer(mut set: impl FnMut(usize) -> io::Result<()>) {
    let mut size = SOCKET_BUFFER;
    while size >= 64 << 10 {
        if set(size).is_ok() {
            return;
        }
        size /= 2;
    }
}

/// Sets the routing mark behind UAPI's `fwmark` (0 clears it): Linux's `SO_MARK`,
/// FreeBSD's `SO_USER_COOKIE`. macOS and NetBSD have none: a non-zero mark is refused
/// with `EOPNOTSUPP`, logged with what to do (`wg_platform::routing_mark`).
fn set_mark(s: &Socket, fwmark: u32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return s.set_mark(fwmark);
    #[cfg(target_os = "freebsd")]
    return nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::UserCookie, &fwmark)
        .map_err(io::Error::from);
    #[cfg(any(target_os = "macos", target_os = "netbsd"))]
    {
        let _ = s;
        let os = wg_platform::Os::current().unwrap_or(wg_platform::Os::MacOs);
        match wg_platform::routing_mark::apply_mark(os, fwmark) {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!("{e}");
                Err(io::Error::from_raw_os_error(
                    nix::errno::Errno::EOPNOTSUPP as i32,
                ))
            }
        }
    }
}

/// Binds `port` (0: a free port chosen by the kernel) on IPv4 and the same port on IPv6.
/// With port 0 a few ports are tried in case the IPv6 side of the first one is taken.
pub fn bind(port: u16, fwmark: u32, offload: UdpOffload) -> io::Result<UdpSockets> {
    let attempts = if port == 0 { 8 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let (v4, v4_offload) = socket(Domain::IPV4, fwmark, offload)?;
        v4.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
        let bound = v4
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .ok_or_else(|| io::Error::other("bound IPv4 socket has no port"))?;
        let v6 = match socket(Domain::IPV6, fwmark, offload) {
            Ok((s, _)) => match s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, bound)).into()) {
                Ok(()) => Some(s),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    last_error = Some(e);
                    continue;
                }
                // No IPv6 on this host (EAFNOSUPPORT, EADDRNOTAVAIL): IPv4 only.
                Err(e) => {
                    tracing::info!("IPv6 unavailable ({e}); listening on IPv4 only");
                    None
                }
            },
            Err(e) => {
                tracing::info!("IPv6 unavailable ({e}); listening on IPv4 only");
                None
            }
        };
        return Ok(UdpSockets {
            v4: v4.into(),
            v6: v6.map(Into::into),
            port: bound,
            offload: v4_offload,
        });
    }
    Err(last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

/// Why a port or mark could not be applied, in words: a port below 1024 refused with
/// `EACCES` means the capability is missing, not that the port is taken.
pub fn describe_errno(errno: i32, port: u16) -> String {
    let text = io::Error::from_raw_os_error(errno);
    if errno == nix::errno::Errno::EACCES as i32 && port != 0 && port < 1024 {
        format!(
            "{text}: ports below 1024 need CAP_NET_BIND_SERVICE, which this daemon does not hold (it was started without it, or with --no-low-ports / WG_RS_NO_LOW_PORTS)"
        )
    } else if errno == nix::errno::Errno::EPERM as i32 {
        format!("{text}: a firewall mark needs CAP_NET_ADMIN")
    } else {
        text.to_string()
    }
}

/// Sets the routing mark on existing sockets (0 clears it; see [`set_mark`]).
pub fn set_fwmark(sockets: &UdpSockets, fwmark: u32) -> io::Result<()> {
    set_mark(&socket2::SockRef::from(&sockets.v4), fwmark)?;
    if let Some(v6) = &sockets.v6 {
        set_mark(&socket2::SockRef::from(v6), fwmark)?;
    }
    Ok(())
}

/// The listen sockets and their firewall mark, changed all or nothing.
#[derive(Debug)]
pub struct SocketOwner {
    /// The sockets in use.
    pub sockets: UdpSockets,
    /// Their `SO_MARK` (0: none).
    pub fwmark: u32,
    /// The offloads wanted for new sockets.
    pub offload: UdpOffload,
    /// Whether listen ports below 1024 may be bound. Off (`--no-low-ports`), such a port is
    /// refused with EACCES before any bind, whatever capabilities the process still holds
    /// (a request can arrive before the monitor has dropped them).
    pub low_ports: bool,
}

impl SocketOwner {
    /// Applies a wanted port and mark. A different port binds new sockets (with the new
    /// mark) and returns `Ok(true)`: the caller hands them to the data plane. The same port
    /// only re-marks the current sockets. On failure nothing changed and the errno says why
    /// (EADDRINUSE for a taken port).
    pub fn reconfigure(&mut self, port: u16, fwmark: u32) -> Result<bool, i32> {
        if !self.low_ports && port != 0 && port < 1024 && port != self.sockets.port {
            return Err(nix::errno::Errno::EACCES as i32);
        }
        // Never 0, which keyd would take for success.
        let errno = |e: io::Error| {
            e.raw_os_error()
                .filter(|&n| n > 0)
                .unwrap_or(nix::errno::Errno::EIO as i32)
        };
        if port != self.sockets.port {
            let new = bind(port, fwmark, self.offload).map_err(errno)?;
            tracing::info!("listening on port {}", new.port);
            self.sockets = new;
            self.fwmark = fwmark;
            Ok(true)
        } else if fwmark != self.fwmark {
            set_fwmark(&self.sockets, fwmark).map_err(errno)?;
            self.fwmark = fwmark;
            Ok(false)
        } else {
            Ok(false)
        }
    }

    /// The message announcing the current sockets to the data plane, and their fds.
    pub fn announcement(&self) -> (MonitorToDatad, Vec<BorrowedFd<'_>>) {
        let mut fds = vec![self.sockets.v4.as_fd()];
        if let Some(v6) = &self.sockets.v6 {
            fds.push(v6.as_fd());
        }
        (
            MonitorToDatad::Sockets {
                listen_port: self.sockets.port,
                has_ipv6: self.sockets.v6.is_some(),
            },
            fds,
        )
    }

    /// keyd's `KeydToMonitor::Reconfigure { port, fwmark }`: applies it
    /// ([`SocketOwner::reconfigure`]), logs a failure, and says what to send. The caller
    /// (the monitor, or `wg-embed` in one process) sends [`Reconfiguration::announce`] to
    /// the data plane first, then [`Reconfiguration::reply`] to keyd.
    pub fn handle_reconfigure(&mut self, port: u16, fwmark: u32) -> Reconfiguration<'_> {
        let result = self.reconfigure(port, fwmark);
        let errno = match result {
            Ok(_) => 0,
            Err(errno) => {
                tracing::warn!(
                    "cannot apply port {port} / fwmark {fwmark}: {}; keeping port {}",
                    describe_errno(errno, port),
                    self.sockets.port
                );
                errno
            }
        };
        Reconfiguration {
            reply: MonitorToKeyd::Reconfigured {
                port: self.sockets.port,
                errno,
            },
            announce: (result == Ok(true)).then(|| self.announcement()),
        }
    }
}

/// What one `Reconfigure` request comes to ([`SocketOwner::handle_reconfigure`]).
#[derive(Debug)]
pub struct Reconfiguration<'a> {
    /// keyd's answer, `MonitorToKeyd::Reconfigured`: the port in use afterwards, and 0 or
    /// the errno of the failure (then nothing changed).
    pub reply: MonitorToKeyd,
    /// The new sockets for the data plane (message and descriptors), when the port
    /// changed; `None` when the sockets stayed (same port, or failure).
    pub announce: Option<(MonitorToDatad, Vec<BorrowedFd<'a>>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_low_port_names_the_capability() {
        let eacces = nix::errno::Errno::EACCES as i32;
        assert!(describe_errno(eacces, 443).contains("CAP_NET_BIND_SERVICE"));
        assert!(!describe_errno(eacces, 51820).contains("CAP_NET_BIND_SERVICE"));
        let inuse = describe_errno(nix::errno::Errno::EADDRINUSE as i32, 443);
        assert!(!inuse.contains("CAP_"), "{inuse}");
    }

    #[test]
    fn binds_the_same_port_on_both_families() {
        let s = bind(0, 0, UdpOffload::default()).unwrap();
        assert_ne!(s.port, 0);
        assert_eq!(s.v4.local_addr().unwrap().port(), s.port);
        if let Some(v6) = &s.v6 {
            assert_eq!(v6.local_addr().unwrap().port(), s.port);
        }
    }

    #[test]
    fn a_failed_rebind_keeps_the_old_sockets() {
        let taken = bind(0, 0, UdpOffload::default()).unwrap();
        let mut owner = SocketOwner {
            sockets: bind(0, 0, UdpOffload::default()).unwrap(),
            fwmark: 0,
            offload: UdpOffload::default(),
            low_ports: true,
        };
        let old = owner.sockets.port;
        assert_eq!(
            owner.reconfigure(taken.port, 0),
            Err(nix::errno::Errno::EADDRINUSE as i32)
        );
        assert_eq!(owner.sockets.port, old);
        assert_eq!(owner.reconfigure(old, 0), Ok(false));
        assert_eq!(owner.reconfigure(0, 0), Ok(true));
        assert_ne!(owner.sockets.port, old);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn offloads_are_probed_and_can_be_turned_off() {
        // Linux 5.0 and later have both; CI runs on such kernels.
        let on = bind(0, 0, UdpOffload::default()).unwrap();
        assert_eq!(on.offload, UdpOffload::default());
        let gro = nix::sys::socket::getsockopt(&on.v4, nix::sys::socket::sockopt::UdpGroSegment);
        assert_eq!(gro.ok(), Some(true));
        let off = UdpOffload {
            gso: false,
            gro: false,
        };
        let plain = bind(0, 0, off).unwrap();
        assert_eq!(plain.offload, off);
        let gro = nix::sys::socket::getsockopt(&plain.v4, nix::sys::socket::sockopt::UdpGroSegment);
        assert_eq!(gro.ok(), Some(false));
    }

    fn owner() -> SocketOwner {
        SocketOwner {
            sockets: bind(0, 0, UdpOffload::default()).unwrap(),
            fwmark: 0,
            offload: UdpOffload::default(),
            low_ports: true,
        }
    }

    #[test]
    fn with_low_ports_off_a_port_below_1024_is_refused_before_any_bind() {
        let mut owner = owner();
        owner.low_ports = false;
        let old = owner.sockets.port;
        // Refused by policy (the test runs as root, where a bind would succeed).
        assert_eq!(
            owner.reconfigure(443, 0),
            Err(nix::errno::Errno::EACCES as i32)
        );
        assert_eq!(owner.sockets.port, old);
        // Other ports are unaffected.
        assert_eq!(owner.reconfigure(0, 0), Ok(true));
    }

    /// The port and errno of a `Reconfigured` reply.
    fn answer(r: &Reconfiguration<'_>) -> (u16, i32) {
        match r.reply {
            MonitorToKeyd::Reconfigured { port, errno } => (port, errno),
            ref other => panic!("not a Reconfigured reply: {other:?}"),
        }
    }

    #[test]
    fn the_same_port_is_neither_rebound_nor_announced() {
        let mut owner = owner();
        let port = owner.sockets.port;
        let v4 = owner.sockets.v4.local_addr().unwrap();
        let r = owner.handle_reconfigure(port, 0);
        assert_eq!(answer(&r), (port, 0));
        assert!(r.announce.is_none());
        assert_eq!(owner.sockets.v4.local_addr().unwrap(), v4);
    }

    #[test]
    fn a_new_port_is_announced_with_the_new_sockets() {
        let mut owner = owner();
        let old = owner.sockets.port;
        let r = owner.handle_reconfigure(0, 0);
        let (port, errno) = answer(&r);
        assert_eq!(errno, 0);
        assert_ne!(port, old);
        let Some((
            MonitorToDatad::Sockets {
                listen_port,
                has_ipv6,
            },
            fds,
        )) = &r.announce
        else {
            panic!("no socket announcement: {:?}", r.announce);
        };
        assert_eq!(*listen_port, port);
        assert_eq!(fds.len(), 1 + usize::from(*has_ipv6));
        let announced = UdpSocket::from(fds[0].try_clone_to_owned().unwrap());
        assert_eq!(announced.local_addr().unwrap().port(), port);
        drop(r);
        assert_eq!(owner.sockets.port, port);
    }

    #[test]
    fn a_failure_passes_the_errno_through_and_keeps_the_port() {
        let taken = bind(0, 0, UdpOffload::default()).unwrap();
        let mut owner = owner();
        let old = owner.sockets.port;
        let r = owner.handle_reconfigure(taken.port, 0);
        assert_eq!(answer(&r), (old, nix::errno::Errno::EADDRINUSE as i32));
        assert!(r.announce.is_none());
        assert_eq!(owner.sockets.port, old);
    }

    #[test]
    fn a_new_mark_on_the_same_port_is_never_announced() {
        // SO_MARK needs CAP_NET_ADMIN: with it the mark is applied, without it EPERM is
        // passed through; the sockets stay either way.
        let mut owner = owner();
        let port = owner.sockets.port;
        let r = owner.handle_reconfigure(port, 7);
        let (answered, errno) = answer(&r);
        assert_eq!(answered, port);
        assert!(r.announce.is_none());
        assert!(
            errno == 0 || errno == nix::errno::Errno::EPERM as i32,
            "errno {errno}"
        );
        drop(r);
        assert_eq!(owner.fwmark, if errno == 0 { 7 } else { 0 });
    }

    #[test]
    fn a_taken_port_is_an_addr_in_use_error() {
        let first = bind(0, 0, UdpOffload::default()).unwrap();
        let err = bind(first.port, 0, UdpOffload::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
