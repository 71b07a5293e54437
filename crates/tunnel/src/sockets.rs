//! The UDP sockets: one IPv4 and (where the host has IPv6) one IPv6 socket on the same
//! port, as wireguard-go binds them.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// How often a random port is tried again when IPv6 finds it taken (wireguard-go: 100).
const RANDOM_PORT_ATTEMPTS: usize = 100;

/// The bound sockets and their port.
#[derive(Debug)]
pub(crate) struct Sockets {
    pub(crate) v4: Option<UdpSocket>,
    pub(crate) v6: Option<UdpSocket>,
    pub(crate) port: u16,
}

/// Sockets created but not yet bound: their descriptors exist (so their numbers differ
/// from the sockets they replace) before the old ones are closed.
pub(crate) struct Unbound {
    v4: Socket,
    v6: Option<Socket>,
    fwmark: u32,
}

impl Unbound {
    /// Creates the sockets and sets `fwmark` on them (0: none).
    pub(crate) fn new(fwmark: u32) -> io::Result<Self> {
        let v4 = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        // No IPv6 on this host: IPv4 only, as wireguard-go.
        let v6 = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).ok();
        for socket in std::iter::once(&v4).chain(v6.as_ref()) {
            socket.set_nonblocking(true)?;
            set_mark(socket, fwmark)?;
        }
        if let Some(v6) = &v6 {
            v6.set_only_v6(true)?;
        }
        Ok(Self { v4, v6, fwmark })
    }

    /// Binds both to `port` (0: a random port free for both), or fails (`EADDRINUSE`
    /// when the port is taken). Must run inside the tunnel's runtime.
    pub(crate) fn bind(self, port: u16) -> io::Result<Sockets> {
        let attempts = if port == 0 { RANDOM_PORT_ATTEMPTS } else { 1 };
        let mut sockets = self;
        let mut result = Err(io::Error::from(io::ErrorKind::AddrInUse));
        for _ in 0..attempts {
            result = bind_pair(&sockets.v4, sockets.v6.as_ref(), port);
            match &result {
                // A random port free for IPv4 but taken for IPv6: another one, with fresh
                // sockets (a socket binds once).
                Err(e) if port == 0 && e.kind() == io::ErrorKind::AddrInUse => {
                    sockets = Unbound::new(sockets.fwmark)?;
                }
                _ => break,
            }
        }
        let bound = result?;
        Ok(Sockets {
            v4: Some(UdpSocket::from_std(sockets.v4.into())?),
            v6: sockets
                .v6
                .map(|s| UdpSocket::from_std(s.into()))
                .transpose()?,
            port: bound,
        })
    }
}

/// Binds `v4` to `port` and `v6` to the port `v4` got; the port.
fn bind_pair(v4: &Socket, v6: Option<&Socket>, port: u16) -> io::Result<u16> {
    v4.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    let bound = v4
        .local_addr()?
        .as_socket()
        .map_or(port, |addr| addr.port());
    if let Some(v6) = v6 {
        v6.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, bound)).into())?;
    }
    Ok(bound)
}

impl Sockets {
    /// The socket for a destination's family.
    pub(crate) fn for_destination(&self, destination: &SocketAddr) -> Option<&UdpSocket> {
        match destination {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
    }

    /// The descriptors, for `VpnService.protect()`.
    pub(crate) fn raw_fds(&self) -> (Option<RawFd>, Option<RawFd>) {
        (
            self.v4.as_ref().map(AsRawFd::as_raw_fd),
            self.v6.as_ref().map(AsRawFd::as_raw_fd),
        )
    }

    /// Sets `fwmark` on the bound sockets.
    pub(crate) fn set_mark(&self, fwmark: u32) -> io::Result<()> {
        for socket in self.v4.iter().chain(self.v6.as_ref()) {
            set_mark(&socket2::SockRef::from(socket), fwmark)?;
        }
        Ok(())
    }
}

/// `SO_MARK` where it exists (Linux, Android); elsewhere only 0 is accepted.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_mark(socket: &Socket, fwmark: u32) -> io::Result<()> {
    socket.set_mark(fwmark)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_mark(_socket: &Socket, fwmark: u32) -> io::Result<()> {
    if fwmark == 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "fwmark exists on Linux and Android only",
        ))
    }
}
