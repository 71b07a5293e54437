//! Batched UDP I/O: a run of equal-sized datagrams to one destination in one `sendmsg`
//! (`UDP_SEGMENT`), and a run of datagrams from one source in one `recvmsg` (`UDP_GRO`).
//! Both fall back to one datagram per call when the kernel or the path refuses.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Most datagrams one `UDP_SEGMENT` send may carry (`UDP_MAX_SEGMENTS` in Linux).
pub(crate) const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes one `UDP_SEGMENT` send may carry: the whole batch must still fit one UDP
/// length field (65535 minus the UDP header, and over IPv4 minus the IP header too), or
/// the kernel refuses all of it with `EMSGSIZE`.
pub(crate) const MAX_GSO_BYTES: usize = 65535 - 8 - 20;

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
pub(crate) fn try_recv_run(socket: &UdpSocket, buf: &mut [u8], cmsg: &mut [u8]) -> io::Result<Run> {
    socket.try_io(Interest::READABLE, || {
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
    socket: &UdpSocket,
    endpoint: SocketAddr,
    datagrams: &[IoSlice<'_>],
    segment: usize,
    gso: bool,
) -> io::Result<bool> {
    let addr = SockaddrStorage::from(endpoint);
    if gso && datagrams.len() > 1 {
        let segment = u16::try_from(segment).map_err(|_| io::Error::from(Errno::EMSGSIZE))?;
        let sent = socket
            .async_io(Interest::WRITABLE, || {
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
    socket: &UdpSocket,
    addr: &SockaddrStorage,
    datagrams: &[IoSlice<'_>],
) -> io::Result<()> {
    for datagram in datagrams {
        socket
            .async_io(Interest::WRITABLE, || {
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
