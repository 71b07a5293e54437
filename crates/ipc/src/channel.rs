//! Transports: a `SOCK_SEQPACKET` socket (one datagram per message, so message boundaries
//! come from the kernel, not from a length prefix an attacker could forge; not on macOS), a
//! `SOCK_STREAM` socket with length-prefixed frames ([`crate::stream`]) and an in-memory
//! pair, all with the same interface.

#[cfg(not(target_os = "macos"))]
use std::io::{IoSlice, IoSliceMut};
#[cfg(not(target_os = "macos"))]
use std::os::fd::AsRawFd;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

#[cfg(not(target_os = "macos"))]
use nix::sys::socket::{
    AddressFamily, ControlMessage, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, RecvMsg};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Mutex, mpsc};
#[cfg(not(target_os = "macos"))]
use zeroize::Zeroize;
use zeroize::Zeroizing;

use crate::stream::StreamChannel;
use crate::{IpcError, MAX_FDS, MAX_MESSAGE_LEN, decode, encode};

/// A decoded message and the descriptors that came with it.
#[derive(Debug)]
pub struct Received<T> {
    /// The message.
    pub msg: T,
    /// Descriptors passed with it (already close-on-exec).
    pub fds: Vec<OwnedFd>,
}

/// An encoded message and its descriptors. The bytes may hold session keys: they are
/// zeroized wherever a frame is dropped.
pub(crate) type Frame = (Zeroizing<Vec<u8>>, Vec<OwnedFd>);

enum Transport {
    #[cfg(not(target_os = "macos"))]
    Seqpacket(AsyncFd<OwnedFd>),
    Stream(StreamChannel),
    Memory {
        tx: mpsc::Sender<Frame>,
        rx: Mutex<mpsc::Receiver<Frame>>,
    },
}

/// One end of an IPC channel.
pub struct Channel {
    transport: Transport,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.transport {
            #[cfg(not(target_os = "macos"))]
            Transport::Seqpacket(fd) => write!(f, "Channel(seqpacket fd {})", fd.as_raw_fd()),
            Transport::Stream(stream) => write!(f, "Channel(stream fd {})", stream.raw_fd()),
            Transport::Memory { .. } => f.write_str("Channel(memory)"),
        }
    }
}

/// A connected pair of the transport this system's daemon uses, for [`Channel::from_fd`]:
/// [`seqpacket_pair`] on Linux, FreeBSD and NetBSD, [`crate::stream_pair`] on macOS (which has
/// no `SOCK_SEQPACKET`). Close-on-exec (clear the flag on the end a child process should
/// inherit).
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(not(target_os = "macos"))]
    return seqpacket_pair();
    #[cfg(target_os = "macos")]
    return crate::stream_pair();
}

/// A connected `SOCK_SEQPACKET` pair, close-on-exec (clear the flag on the end a child
/// process should inherit). Not on macOS, which has no `SOCK_SEQPACKET`.
#[cfg(not(target_os = "macos"))]
pub fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(std::io::Error::from)
}

/// Adopts descriptors the kernel just installed in our table for this message.
#[allow(unsafe_code)]
fn adopt(raw: Vec<RawFd>) -> Vec<OwnedFd> {
    raw.into_iter()
        // SAFETY: SCM_RIGHTS descriptors are fresh entries the kernel created for this
        // process during recvmsg; nothing else owns them, so each is adopted exactly once.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

/// `recvmsg` flags: descriptors arrive close-on-exec where the system can do it atomically.
#[cfg(not(target_os = "macos"))]
pub(crate) const RECV_FLAGS: MsgFlags = MsgFlags::MSG_CMSG_CLOEXEC;
/// macOS has no `MSG_CMSG_CLOEXEC`: [`received_fds`] sets the flag right after `recvmsg`.
/// (A `fork` and `exec` by another thread of this process in between could leak them: the
/// daemon's processes do not start programs while they receive.)
#[cfg(target_os = "macos")]
pub(crate) const RECV_FLAGS: MsgFlags = MsgFlags::empty();

/// `sendmsg` flags: a closed peer is an `EPIPE` error, not a `SIGPIPE` (macOS, which lacks
/// the flag, gets `SO_NOSIGPIPE` on the socket instead).
#[cfg(not(target_os = "macos"))]
pub(crate) const SEND_FLAGS: MsgFlags = MsgFlags::MSG_NOSIGNAL;
/// See the other systems' `SEND_FLAGS`.
#[cfg(target_os = "macos")]
pub(crate) const SEND_FLAGS: MsgFlags = MsgFlags::empty();

/// The descriptors one `recvmsg` brought, adopted (so they are closed if refused) and
/// close-on-exec; `Err(BadFds)` when the ancillary data was truncated (the peer sent more
/// than [`MAX_FDS`]), held anything but descriptors, or held too many.
pub(crate) fn received_fds<S>(msg: &RecvMsg<'_, '_, S>) -> Result<Vec<OwnedFd>, IpcError> {
    let mut fds = Vec::new();
    let mut bad = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    match msg.cmsgs() {
        Ok(cmsgs) => {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::ScmRights(raw) => fds.extend(adopt(raw)),
                    _ => bad = true,
                }
            }
        }
        Err(_) => bad = true,
    }
    #[cfg(target_os = "macos")]
    for fd in &fds {
        set_cloexec(fd)?;
    }
    if bad || fds.len() > MAX_FDS {
        return Err(IpcError::BadFds);
    }
    Ok(fds)
}

/// Marks `fd` close-on-exec.
#[cfg(target_os = "macos")]
fn set_cloexec(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

pub(crate) fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Registers a socket with the tokio reactor for both directions.
#[allow(unsafe_code)]
pub(crate) fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    let interest = Interest::READABLE | Interest::WRITABLE;
    // an `OwnedFd` stays open and returns the same descriptor from `as_raw_fd`
    // for as long as it is owned, and the `AsyncFd` owns it until it is dropped.
    // SAFETY: upheld as the lines above say.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(std::io::Error::from)
}

/// The uid of the process at the other end of a Unix socket, as the kernel recorded it.
pub(crate) fn socket_peer_uid(fd: &OwnedFd) -> std::io::Result<u32> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        Ok(getsockopt(fd, PeerCredentials)?.uid())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let (uid, _gid) = nix::unistd::getpeereid(fd)?;
        Ok(uid.as_raw())
    }
}

impl Channel {
    /// Wraps one end of a socket pair, with the transport its type calls for: a
    /// `SOCK_SEQPACKET` socket ([`pair`] on Linux, FreeBSD and NetBSD) carries one message
    /// per datagram, a `SOCK_STREAM` socket ([`pair`] on macOS, [`crate::stream_pair`]
    /// anywhere) framed messages (as [`Channel::from_stream_fd`]). The kernel is asked, so
    /// a channel handed over by another process is read the way it was made. Any other
    /// socket is refused. Needs a tokio runtime.
    pub fn from_fd(fd: OwnedFd) -> std::io::Result<Self> {
        use nix::sys::socket::{SockType, getsockopt, sockopt};
        match getsockopt(&fd, sockopt::SockType)? {
            #[cfg(not(target_os = "macos"))]
            SockType::SeqPacket => {
                set_nonblocking(&fd)?;
                Ok(Self {
                    transport: Transport::Seqpacket(register(fd)?),
                })
            }
            SockType::Stream => Self::from_stream_fd(fd),
            other => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("an IPC channel must be a stream or seqpacket socket, not {other:?}"),
            )),
        }
    }

    /// Wraps one end of a `SOCK_STREAM` pair ([`crate::stream_pair`]): every message is
    /// framed (`wg-platform`'s `stream_frame`). Needs a tokio runtime.
    pub fn from_stream_fd(fd: OwnedFd) -> std::io::Result<Self> {
        Ok(Self {
            transport: Transport::Stream(StreamChannel::new(fd)?),
        })
    }

    /// The socket's descriptor (none for an in-memory channel): where a sandboxed
    /// process reports a refused syscall (a datagram: the `SOCK_SEQPACKET` transport's).
    pub fn raw_fd(&self) -> Option<RawFd> {
        match &self.transport {
            #[cfg(not(target_os = "macos"))]
            Transport::Seqpacket(fd) => Some(fd.as_raw_fd()),
            Transport::Stream(stream) => Some(stream.raw_fd()),
            Transport::Memory { .. } => None,
        }
    }

    /// The uid of the process at the other end, as the kernel recorded it when the pair
    /// was made (`SO_PEERCRED` on Linux, `getpeereid` elsewhere); for an in-memory pair,
    /// this process's effective uid.
    pub fn peer_uid(&self) -> std::io::Result<u32> {
        match &self.transport {
            #[cfg(not(target_os = "macos"))]
            Transport::Seqpacket(fd) => socket_peer_uid(fd.get_ref()),
            Transport::Stream(stream) => stream.peer_uid(),
            Transport::Memory { .. } => Ok(nix::unistd::geteuid().as_raw()),
        }
    }

    /// Two connected in-memory ends, for the in-process mode.
    pub fn memory_pair() -> (Self, Self) {
        const DEPTH: usize = 1024;
        let (a_tx, b_rx) = mpsc::channel(DEPTH);
        let (b_tx, a_rx) = mpsc::channel(DEPTH);
        let end = |tx, rx| Self {
            transport: Transport::Memory {
                tx,
                rx: Mutex::new(rx),
            },
        };
        (end(a_tx, a_rx), end(b_tx, b_rx))
    }

    /// Sends one message with optional descriptors (duplicated into the receiver), waiting
    /// while the other end's queue is full. On a stream channel, a message this future
    /// started writing before it was dropped is completed by the channel's next operation.
    pub async fn send<T: Serialize>(
        &self,
        msg: &T,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), IpcError> {
        if fds.len() > MAX_FDS {
            return Err(IpcError::BadFds);
        }
        let bytes = Zeroizing::new(encode(msg)?);
        match &self.transport {
            #[cfg(not(target_os = "macos"))]
            Transport::Seqpacket(fd) => {
                let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                loop {
                    let mut guard = fd.writable().await?;
                    let sent = guard.try_io(|inner| {
                        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() {
                            &[]
                        } else {
                            &[ControlMessage::ScmRights(&raw)]
                        };
                        sendmsg::<()>(
                            inner.as_raw_fd(),
                            &[IoSlice::new(&bytes)],
                            cmsgs,
                            MsgFlags::MSG_NOSIGNAL,
                            None,
                        )
                        .map_err(std::io::Error::from)
                    });
                    match sent {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(e)) if is_closed(&e) => {
                            return Err(IpcError::Closed);
                        }
                        Ok(Err(e)) => return Err(e.into()),
                        Err(_would_block) => continue,
                    }
                }
            }
            Transport::Stream(stream) => stream.send(&bytes, fds).await,
            Transport::Memory { tx, .. } => {
                let owned = fds
                    .iter()
                    .map(|fd| fd.try_clone_to_owned())
                    .collect::<Result<Vec<_>, _>>()?;
                tx.send((bytes, owned)).await.map_err(|_| IpcError::Closed)
            }
        }
    }

    /// Sends one message (no descriptors) without waiting: `Ok(false)` when the other
    /// end's queue is full and nothing was sent, so the caller can keep serving its other
    /// sources (two processes that each block on sending to the other deadlock) and retry
    /// once [`Channel::writable`] returns.
    ///
    /// On a stream channel `Ok(true)` means the message is committed: if the socket took
    /// only its beginning, the rest is written by the channel's next `send`, `try_send`,
    /// `writable` or `recv` (before any other message), so keep a `recv` or `writable`
    /// pending, as an event loop does.
    pub fn try_send<T: Serialize>(&self, msg: &T) -> Result<bool, IpcError> {
        self.try_send_encoded(&Zeroizing::new(encode(msg)?))
    }

    /// [`Channel::try_send`] of a message encoded beforehand (with [`crate::encode`]), so a
    /// sender that queues messages meets an encoding error when it queues, never mistaking
    /// it for a failure of the other process. On `Ok(false)` nothing was sent.
    pub fn try_send_encoded(&self, bytes: &[u8]) -> Result<bool, IpcError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(wg_messages::MessageError::TooLarge(bytes.len()).into());
        }
        match &self.transport {
            #[cfg(not(target_os = "macos"))]
            Transport::Seqpacket(fd) => {
                let sent = fd.try_io(Interest::WRITABLE, |inner| {
                    sendmsg::<()>(
                        inner.as_raw_fd(),
                        &[IoSlice::new(bytes)],
                        &[],
                        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                        None,
                    )
                    .map_err(std::io::Error::from)
                });
                match sent {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
                    Err(e) if is_closed(&e) => Err(IpcError::Closed),
                    Err(e) => Err(e.into()),
                }
            }
            Transport::Stream(stream) => stream.try_send(bytes),
            Transport::Memory { tx, .. } => {
                match tx.try_send((Zeroizing::new(bytes.to_vec()), Vec::new())) {
                    Ok(()) => Ok(true),
                    Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
                    Err(mpsc::error::TrySendError::Closed(_)) => Err(IpcError::Closed),
                }
            }
        }
    }

    /// Waits until [`Channel::try_send`] may succeed again (on a stream channel: until the
    /// rest of a message the socket took only in part is written, and then some room).
    pub async fn writable(&self) -> Result<(), IpcError> {
        match &self.transport {
            // The guard is dropped without clearing: readiness is cleared only by a
            // `try_send` that really found the queue full.
            #[cfg(not(target_os = "macos"))]
            Transport::Seqpacket(fd) => fd.writable().await.map(drop).map_err(Into::into),
            Transport::Stream(stream) => stream.writable().await,
            Transport::Memory { tx, .. } => {
                tx.reserve().await.map(drop).map_err(|_| IpcError::Closed)
            }
        }
    }

    /// Receives and decodes one message. Any error means the channel is finished.
    ///
    /// Cancel-safe: an event loop may drop this future and make a new one; on a stream
    /// channel the part of a message read so far stays with the channel.
    pub async fn recv<T: DeserializeOwned>(&self) -> Result<Received<T>, IpcError> {
        let (bytes, fds) = match &self.transport {
            #[cfg(not(target_os = "macos"))]
            Transport::Seqpacket(fd) => recv_frame(fd).await?,
            Transport::Stream(stream) => stream.recv_frame().await?,
            Transport::Memory { rx, .. } => rx.lock().await.recv().await.ok_or(IpcError::Closed)?,
        };
        let msg = decode(&bytes).inspect_err(|e| {
            tracing::error!("IPC: {e}");
            // A stream channel is shut down, so the peer sees the end too.
            if let Transport::Stream(stream) = &self.transport {
                stream.close();
            }
        })?;
        Ok(Received { msg, fds })
    }
}

/// The other end is gone: `EPIPE`, or `ECONNRESET` when it left messages unread.
pub(crate) fn is_closed(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EPIPE | Errno::ECONNRESET)
    )
}

#[cfg(not(target_os = "macos"))]
async fn recv_frame(fd: &AsyncFd<OwnedFd>) -> Result<Frame, IpcError> {
    // A peer that dies with our messages unread makes the next receive fail with
    // ECONNRESET once, even though what it sent before dying (a SIGSYS or failure report
    // saying why) is still queued: read on once to get it, then the end of the channel.
    let mut reset_seen = false;
    loop {
        let mut guard = fd.readable().await?;
        // Allocated only once a message is there: an event loop re-creates this future for
        // every event it waits for, and zeroing 64 KiB each time showed in its profile.
        let mut buf = vec![0u8; MAX_MESSAGE_LEN + 1];
        let got = guard.try_io(|inner| {
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
            let mut iov = [IoSliceMut::new(buf.as_mut_slice())];
            let msg = recvmsg::<()>(inner.as_raw_fd(), &mut iov, Some(&mut cmsg), RECV_FLAGS)
                .map_err(std::io::Error::from)?;
            Ok((msg.bytes, msg.flags, received_fds(&msg)))
        });
        match got {
            Ok(Ok((len, flags, fds))) => {
                let Ok(fds) = fds else {
                    buf.zeroize();
                    return Err(IpcError::BadFds);
                };
                if flags.contains(MsgFlags::MSG_TRUNC) || len > MAX_MESSAGE_LEN {
                    buf.zeroize();
                    return Err(wg_messages::MessageError::TooLarge(len).into());
                }
                if len == 0 && fds.is_empty() {
                    return Err(IpcError::Closed);
                }
                // Only the received bytes can hold a secret: keep an exact copy (wiped
                // when dropped) and wipe them here. Wiping the whole 64 KiB buffer on every
                // message cost a responder a fifth of its handshake rate.
                let received = buf.get_mut(..len).unwrap_or_default();
                let frame = Zeroizing::new(received.to_vec());
                received.zeroize();
                return Ok((frame, fds));
            }
            Ok(Err(e))
                if !reset_seen
                    && e.raw_os_error() == Some(nix::errno::Errno::ECONNRESET as i32) =>
            {
                reset_seen = true;
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_would_block) => continue,
        }
    }
}
