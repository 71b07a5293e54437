//! Batched UDP I/O: a run of equal-sized datagrams to one destination in one `sendmsg`
//! (`UDP_SEGMENT`), and a run of datagrams from one source in one `recvmsg` (`UDP_GRO`).
//! Both fall back to one datagram per call when the kernel or the path refuses.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Most datagrams one `UDP_SEGMENT` send may carry (`UDP_MAX_SEGMENTS` in Linux).
pub(crate) const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes one `UDP_SEGMENT` send may carry: the whole batch must still fit one UDP
/// length field (65535 minus the UDP header, and over IPv4 minus the IP header too), or
/// the kernel refuses all of it with `EMSGSIZE`.
pub(crate) const MAX_GSO_BYTES: usize = 65535 - 8 - 20;

/// A UDP socket the reactor watches for readability only.
///
/// Watched for writability too (as `tokio::net::UdpSocket` is), every send wakes the
/// reactor once more when the kernel frees the datagram (`EPOLLOUT`): an extra epoll round
/// per packet sent, spent before the loop sleeps and so, with the receiver on the same
/// core, before the receiver runs. Sends are tried directly instead; only one that finds
/// the socket buffer full has a duplicate of the descriptor watched for writability while
/// it waits.
pub(crate) struct Socket {
    fd: AsyncFd<UdpSocket>,
}

impl Socket {
    /// Makes `socket` non-blocking and registers it with the current runtime.
    pub(crate) fn new(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Socket {
            fd: register(socket, Interest::READABLE)?,
        })
    }

    /// Waits until a receive may succeed (the readiness stays until one finds nothing).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.fd.readable().await.map(drop)
    }

    /// Runs `send` on the socket now and, while the socket buffer is full, again whenever
    /// it may have room.
    pub(crate) async fn send_with<R>(
        &self,
        mut send: impl FnMut(&UdpSocket) -> io::Result<R>,
    ) -> io::Result<R> {
        match send(self.fd.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
        // Registered until the send went through; dropping it deregisters and closes the
        // duplicate, never the socket.
        let waiter = register(self.fd.get_ref().try_clone()?, Interest::WRITABLE)?;
        waiter.async_io(Interest::WRITABLE, send).await
    }
}

/// Registers `socket` with the current runtime for `interest` alone.
#[allow(unsafe_code)]
fn register(socket: UdpSocket, interest: Interest) -> io::Result<AsyncFd<UdpSocket>> {
    // `register_with_interest` needs the descriptor to stay open and refer to the same open
    // file description while registered, and `as_raw_fd` to return it. A `UdpSocket` owns
    // its descriptor until dropped and always returns it; the `AsyncFd` takes the socket,
    // and this crate only ever borrows it back (`get_ref`), never `get_mut` or `into_inner`.
    // SAFETY: the registered descriptor stays open and unreplaced (above).
    let registered = unsafe { AsyncFd::register_with_interest(socket, interest) };
    registered.map_err(|e| e.into_parts().1)
}

/// Control-message space for one `UDP_GRO` segment size (an `int`).
pub(crate) fn gro_cmsg_buffer() -> Vec<u8> {
    nix::cmsg_space!(libc::c_int)
}

/// One received run: `len` bytes of datagrams from `source`, each `stride` bytes long
/// except possibly the last.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) len: usize,
    pub(crate) stride: usize,
    pub(crate) source: SocketAddr,
}

fn socket_addr(storage: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    storage
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// Receives one run without waiting; `WouldBlock` when nothing is queued (and then the
/// socket's readiness is cleared, so the next `readable().await` really waits).
pub(crate) fn try_recv_run(socket: &Socket, buf: &mut [u8], cmsg: &mut [u8]) -> io::Result<Run> {
    socket.fd.try_io(Interest::READABLE, |socket| {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut *cmsg),
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        let mut stride = msg.bytes;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::UdpGroSegments(size) = c
                    && let Ok(size) = usize::try_from(size)
                    && size > 0
                {
                    stride = size;
                }
            }
        }
        let source = msg
            .address
            .as_ref()
            .and_then(socket_addr)
            .ok_or_else(|| io::Error::other("datagram without a source address"))?;
        Ok(Run {
            len: msg.bytes,
            stride: stride.max(1),
            source,
        })
    })
}

/// Sends `datagrams` (all of `segment` bytes but the last, which may be shorter) to
/// `endpoint`: in one `sendmsg` with `UDP_SEGMENT` when `gso` and there is more than one,
/// else one call each. Waits while the socket buffer is full. Returns whether the kernel
/// refused segmentation (the caller then stops asking for it); the datagrams were sent
/// one by one in that case.
pub(crate) async fn send_run(
    socket: &Socket,
    endpoint: SocketAddr,
    datagrams: &[IoSlice<'_>],
    segment: usize,
    gso: bool,
) -> io::Result<bool> {
    let addr = SockaddrStorage::from(endpoint);
    if gso && datagrams.len() > 1 {
        let segment = u16::try_from(segment).map_err(|_| io::Error::from(Errno::EMSGSIZE))?;
        let sent = socket
            .send_with(|socket| {
                sendmsg(
                    socket.as_raw_fd(),
                    datagrams,
                    &[ControlMessage::UdpGsoSegments(&segment)],
                    MsgFlags::empty(),
                    Some(&addr),
                )
                .map_err(io::Error::from)
            })
            .await;
        match sent {
            Ok(_) => return Ok(false),
            // No segmentation on this path (EIO: the device cannot checksum; EINVAL or
            // ENOPROTOOPT: the kernel lacks it): send them one by one from now on.
            Err(e)
                if matches!(
                    e.raw_os_error().map(Errno::from_raw),
                    Some(Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT)
                ) =>
            {
                tracing::info!("UDP segmentation refused ({e}); sending one datagram per call");
                send_each(socket, &addr, datagrams).await?;
                return Ok(true);
            }
            Err(e) => return Err(e),
        }
    }
    send_each(socket, &addr, datagrams).await?;
    Ok(false)
}

async fn send_each(
    socket: &Socket,
    addr: &SockaddrStorage,
    datagrams: &[IoSlice<'_>],
) -> io::Result<()> {
    for datagram in datagrams {
        socket
            .send_with(|socket| {
                sendmsg(
                    socket.as_raw_fd(),
                    std::slice::from_ref(datagram),
                    &[],
                    MsgFlags::empty(),
                    Some(addr),
                )
                .map_err(io::Error::from)
            })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::net::Ipv4Addr;

    fn bound() -> Socket {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        Socket::new(socket).unwrap()
    }

    #[tokio::test]
    async fn a_datagram_sent_is_received_once_then_the_socket_reports_nothing_queued() {
        let (a, b) = (bound(), bound());
        let to = b.fd.get_ref().local_addr().unwrap();
        let payload = [7u8; 100];
        let refused = send_run(&a, to, &[IoSlice::new(&payload)], payload.len(), false)
            .await
            .unwrap();
        assert!(!refused);
        b.readable().await.unwrap();
        let (mut buf, mut cmsg) = (vec![0u8; 2048], gro_cmsg_buffer());
        let run = try_recv_run(&b, &mut buf, &mut cmsg).unwrap();
        assert_eq!((run.len, run.stride), (100, 100));
        assert_eq!(run.source, a.fd.get_ref().local_addr().unwrap());
        assert_eq!(&buf[..100], &payload);
        let again = try_recv_run(&b, &mut buf, &mut cmsg).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::WouldBlock);
    }

    #[tokio::test]
    async fn a_send_that_finds_the_buffer_full_is_tried_again_once_there_is_room() {
        let a = bound();
        let calls = Cell::new(0);
        let sent = a
            .send_with(|_| {
                calls.set(calls.get() + 1);
                if calls.get() == 1 {
                    Err(io::Error::from(io::ErrorKind::WouldBlock))
                } else {
                    Ok(42)
                }
            })
            .await
            .unwrap();
        assert_eq!((sent, calls.get()), (42, 2));
        // Any other outcome of the first try is final.
        let calls = Cell::new(0);
        let refused = a
            .send_with(|_| -> io::Result<()> {
                calls.set(calls.get() + 1);
                Err(io::Error::from(io::ErrorKind::PermissionDenied))
            })
            .await
            .unwrap_err();
        assert_eq!(
            (refused.kind(), calls.get()),
            (io::ErrorKind::PermissionDenied, 1)
        );
    }
}
