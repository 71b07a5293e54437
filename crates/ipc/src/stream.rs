//! The stream transport: a `SOCK_STREAM` Unix socket for systems without `SOCK_SEQPACKET`
//! (macOS), built and tested everywhere.
//!
//! Each message is one frame of `wg-platform`'s `stream_frame` (a `u32` little-endian
//! length, then the message). The rules that keep a hostile peer from confusing us:
//! - **Reading:** a `recvmsg` never asks for more than the rest of the current frame (first
//!   the 4 length bytes, then exactly the payload), so no read reaches into the next frame
//!   and picks up its descriptors: on Linux a stream read that runs into the next message's
//!   data also takes that message's descriptors. The length is checked before any payload
//!   is read.
//! - **Descriptors** ride on the `sendmsg` that writes a frame's first byte; the receiver
//!   accepts them only from the read that starts a frame (they belong to that message).
//!   Descriptors anywhere else, or with no bytes at all, end the channel.
//! - **Writing:** a frame the socket took only in part is finished before any other frame
//!   starts: the rest waits in the channel (at most one frame) and every operation on the
//!   channel writes it first.
//! - Any error shuts the socket down: the peer sees the end of the stream, and later
//!   operations here fail as closed.

use std::future::Future;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::pin;
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;

use nix::sys::socket::{ControlMessage, Shutdown, recvmsg, sendmsg, shutdown};
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use wg_platform::stream_frame::{self, Decoder, LEN_PREFIX, StreamFrameError};
use zeroize::{Zeroize, Zeroizing};

use crate::channel::{
    Frame, RECV_FLAGS, SEND_FLAGS, is_closed, received_fds, register, set_nonblocking,
    socket_peer_uid,
};
use crate::{IpcError, MAX_FDS, MAX_MESSAGE_LEN};

/// A connected `SOCK_STREAM` Unix socket pair for [`crate::Channel::from_stream_fd`],
/// non-blocking and close-on-exec (clear the flag on the end a child process should
/// inherit).
pub fn stream_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    #[cfg(not(target_os = "macos"))]
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    // macOS's socketpair takes no flags: set them right after (see `RECV_FLAGS` for why a
    // non-atomic close-on-exec is acceptable here).
    #[cfg(target_os = "macos")]
    let flags = SockFlag::empty();
    let (a, b) = socketpair(AddressFamily::Unix, SockType::Stream, None, flags)?;
    #[cfg(target_os = "macos")]
    for fd in [&a, &b] {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        set_nonblocking(fd)?;
        set_no_sigpipe(fd)?;
    }
    Ok((a, b))
}

/// macOS has no `MSG_NOSIGNAL`: writing to a socket whose peer is gone must be an `EPIPE`
/// error, not a signal that kills the process.
#[cfg(target_os = "macos")]
#[allow(unsafe_code)]
fn set_no_sigpipe(fd: &OwnedFd) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(std::io::Error::other)?;
    // `fd` is an open socket for the duration of the call, and the option value
    // points at a live `c_int` whose size is passed alongside it.
    // SAFETY: upheld as the lines above say.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NOSIGPIPE,
            std::ptr::from_ref(&on).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The rest of a frame the socket took only in part. May hold session keys.
struct Tail {
    bytes: Zeroizing<Vec<u8>>,
    written: usize,
}

/// Where the frame being received is.
struct Reading {
    /// Validates lengths and hands back whole messages (fed only whole prefixes and
    /// payloads, so a message cut off by the peer never sits in its unwiped buffer).
    decoder: Decoder,
    prefix: [u8; LEN_PREFIX],
    prefix_have: usize,
    /// Once the prefix is accepted: the payload, sized to its length.
    payload: Option<Zeroizing<Vec<u8>>>,
    payload_have: usize,
    /// Descriptors that came with the frame's first byte.
    fds: Vec<OwnedFd>,
    /// A peer that died with our data unread makes one read fail with `ECONNRESET` before
    /// what it sent last (maybe a failure report): read on once.
    reset_seen: bool,
}

impl Reading {
    fn new() -> Self {
        Reading {
            decoder: Decoder::new(MAX_MESSAGE_LEN),
            prefix: [0; LEN_PREFIX],
            prefix_have: 0,
            payload: None,
            payload_have: 0,
            fds: Vec::new(),
            reset_seen: false,
        }
    }

    fn at_frame_start(&self) -> bool {
        self.prefix_have == 0 && self.payload.is_none()
    }
}

/// What one read brought.
enum Step {
    /// A whole message.
    Frame(Frame),
    /// Part of one: read on.
    More,
    /// The channel is finished.
    Fail(IpcError),
}

/// The stream end of a [`crate::Channel`]. Both halves of the state sit behind locks that
/// are never held across an `.await`, so futures may be dropped at any point without
/// losing bytes.
pub(crate) struct StreamChannel {
    fd: AsyncFd<OwnedFd>,
    tail: Mutex<Option<Tail>>,
    reading: Mutex<Reading>,
    /// Set on the first error: the socket is shut down and everything fails as closed.
    broken: std::sync::atomic::AtomicBool,
}

/// Which direction became ready.
enum Ready<'a> {
    Read(AsyncFdReadyGuard<'a, OwnedFd>),
    Write(AsyncFdReadyGuard<'a, OwnedFd>),
}

fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, IpcError> {
    // Poisoned: an earlier operation panicked half-way, so the framing state cannot be
    // trusted any more.
    mutex.lock().map_err(|_| IpcError::Closed)
}

impl StreamChannel {
    pub(crate) fn new(fd: OwnedFd) -> std::io::Result<Self> {
        set_nonblocking(&fd)?;
        #[cfg(target_os = "macos")]
        set_no_sigpipe(&fd)?;
        Ok(StreamChannel {
            fd: register(fd)?,
            tail: Mutex::new(None),
            reading: Mutex::new(Reading::new()),
            broken: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub(crate) fn peer_uid(&self) -> std::io::Result<u32> {
        socket_peer_uid(self.fd.get_ref())
    }

    fn is_broken(&self) -> bool {
        self.broken.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Ends the channel for both sides after an error (or a closed peer): the peer reads
    /// the end of the stream, and nothing more is read or written here.
    fn fail(&self, e: IpcError) -> IpcError {
        self.broken
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // Already shut down or the peer gone: nothing more to do either way.
        let _ = shutdown(self.fd.as_raw_fd(), Shutdown::Both);
        if let Ok(mut reading) = self.reading.lock() {
            if let Some(payload) = reading.payload.as_mut() {
                payload.zeroize();
            }
            reading.fds.clear();
        }
        if let Ok(mut tail) = self.tail.lock() {
            *tail = None;
        }
        e
    }

    /// Ends the channel after an error found above the transport (a message that did not
    /// decode).
    pub(crate) fn close(&self) {
        let _closed = self.fail(IpcError::Closed);
    }

    /// An I/O error as the channel's error, ending the channel.
    fn fail_io(&self, e: std::io::Error) -> IpcError {
        if is_closed(&e) {
            self.fail(IpcError::Closed)
        } else {
            self.fail(e.into())
        }
    }

    /// [`crate::Channel::send`].
    pub(crate) async fn send(
        &self,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), IpcError> {
        let prefix = stream_frame::prefix(payload.len(), MAX_MESSAGE_LEN)
            .map_err(|_| wg_messages::MessageError::TooLarge(payload.len()))?;
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut committed = false;
        loop {
            if self.is_broken() {
                return Err(IpcError::Closed);
            }
            let mut guard = self.fd.writable().await.map_err(|e| self.fail_io(e))?;
            let done = guard.try_io(|inner| {
                let mut tail = lock(&self.tail).map_err(std::io::Error::other)?;
                flush(inner.as_raw_fd(), &mut tail)?;
                if !committed {
                    write_frame(inner.as_raw_fd(), &mut tail, &prefix, payload, &raw)?;
                    committed = true;
                }
                // Our own rest, if the socket took only part of the frame.
                flush(inner.as_raw_fd(), &mut tail)
            });
            match done {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => return Err(self.fail_io(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// [`crate::Channel::try_send_encoded`]; the length is checked by the caller.
    pub(crate) fn try_send(&self, payload: &[u8]) -> Result<bool, IpcError> {
        if self.is_broken() {
            return Err(IpcError::Closed);
        }
        let prefix = stream_frame::prefix(payload.len(), MAX_MESSAGE_LEN)
            .map_err(|_| wg_messages::MessageError::TooLarge(payload.len()))?;
        let sent = self.fd.try_io(Interest::WRITABLE, |inner| {
            let mut tail = lock(&self.tail).map_err(std::io::Error::other)?;
            flush(inner.as_raw_fd(), &mut tail)?;
            write_frame(inner.as_raw_fd(), &mut tail, &prefix, payload, &[])
        });
        match sent {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(self.fail_io(e)),
        }
    }

    /// [`crate::Channel::writable`].
    pub(crate) async fn writable(&self) -> Result<(), IpcError> {
        loop {
            if self.is_broken() {
                return Err(IpcError::Closed);
            }
            let mut guard = self.fd.writable().await.map_err(|e| self.fail_io(e))?;
            if lock(&self.tail)?.is_none() {
                // As for the datagram socket: readiness is cleared only by a write that
                // really found the socket full.
                return Ok(());
            }
            match guard.try_io(|inner| {
                flush(
                    inner.as_raw_fd(),
                    &mut *lock(&self.tail).map_err(std::io::Error::other)?,
                )
            }) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => return Err(self.fail_io(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits until the socket is readable, or writable while a frame's rest waits (so a
    /// receiving event loop also finishes what `try_send` started).
    async fn ready(&self) -> Result<Ready<'_>, IpcError> {
        let pending = lock(&self.tail)?.is_some();
        let mut readable = pin!(self.fd.readable());
        let mut writable = pin!(self.fd.writable());
        std::future::poll_fn(|cx| {
            if let Poll::Ready(guard) = readable.as_mut().poll(cx) {
                return Poll::Ready(guard.map(Ready::Read));
            }
            if pending && let Poll::Ready(guard) = writable.as_mut().poll(cx) {
                return Poll::Ready(guard.map(Ready::Write));
            }
            Poll::Pending
        })
        .await
        .map_err(|e| self.fail_io(e))
    }

    /// [`crate::Channel::recv`]'s transport part: the next whole frame and its descriptors.
    pub(crate) async fn recv_frame(&self) -> Result<Frame, IpcError> {
        loop {
            if self.is_broken() {
                return Err(IpcError::Closed);
            }
            match self.ready().await? {
                Ready::Write(mut guard) => {
                    let flushed = guard.try_io(|inner| {
                        flush(
                            inner.as_raw_fd(),
                            &mut *lock(&self.tail).map_err(std::io::Error::other)?,
                        )
                    });
                    if let Ok(Err(e)) = flushed {
                        return Err(self.fail_io(e));
                    }
                }
                Ready::Read(mut guard) => {
                    let step = guard.try_io(|inner| {
                        let mut reading = lock(&self.reading).map_err(std::io::Error::other)?;
                        read_step(inner.as_raw_fd(), &mut reading)
                    });
                    match step {
                        Ok(Ok(Step::Frame(frame))) => return Ok(frame),
                        Ok(Ok(Step::More)) => {}
                        Ok(Ok(Step::Fail(e))) => return Err(self.fail(e)),
                        Ok(Err(e)) => return Err(self.fail_io(e)),
                        Err(_would_block) => {}
                    }
                }
            }
        }
    }
}

/// Writes what is left of a partly written frame; `WouldBlock` if the socket cannot take
/// all of it now.
fn flush(fd: RawFd, tail: &mut Option<Tail>) -> std::io::Result<()> {
    while let Some(rest) = tail.as_mut() {
        let unwritten = rest.bytes.get(rest.written..).unwrap_or_default();
        let n = sendmsg::<()>(fd, &[IoSlice::new(unwritten)], &[], SEND_FLAGS, None)?;
        rest.written += n;
        if rest.written >= rest.bytes.len() {
            *tail = None;
        }
    }
    Ok(())
}

/// Starts a frame (prefix, payload, descriptors with its first byte), with nothing of an
/// earlier frame left to write. What the socket did not take becomes the tail. `WouldBlock`
/// when it took nothing (then the descriptors did not go either).
fn write_frame(
    fd: RawFd,
    tail: &mut Option<Tail>,
    prefix: &[u8; LEN_PREFIX],
    payload: &[u8],
    fds: &[RawFd],
) -> std::io::Result<()> {
    if tail.is_some() {
        return Err(std::io::ErrorKind::WouldBlock.into());
    }
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let n = sendmsg::<()>(
        fd,
        &[IoSlice::new(prefix), IoSlice::new(payload)],
        cmsgs,
        SEND_FLAGS,
        None,
    )?;
    let total = LEN_PREFIX + payload.len();
    if n < total {
        let mut rest = Zeroizing::new(Vec::with_capacity(total - n));
        rest.extend_from_slice(prefix.get(n..).unwrap_or_default());
        rest.extend_from_slice(
            payload
                .get(n.saturating_sub(LEN_PREFIX)..)
                .unwrap_or_default(),
        );
        *tail = Some(Tail {
            bytes: rest,
            written: 0,
        });
    }
    Ok(())
}

/// One `recvmsg` of at most the rest of the current frame's prefix or payload.
fn read_step(fd: RawFd, reading: &mut Reading) -> std::io::Result<Step> {
    let at_frame_start = reading.at_frame_start();
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = {
        let buf: &mut [u8] = match reading.payload.as_mut() {
            Some(payload) => payload.get_mut(reading.payload_have..).unwrap_or_default(),
            None => reading
                .prefix
                .get_mut(reading.prefix_have..)
                .unwrap_or_default(),
        };
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), RECV_FLAGS) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::ECONNRESET) if !reading.reset_seen => {
                reading.reset_seen = true;
                return Ok(Step::More);
            }
            Err(e) => return Err(e.into()),
        };
        (msg.bytes, received_fds(&msg))
    };
    let fds = match fds {
        Ok(fds) => fds,
        Err(e) => return Ok(Step::Fail(e)),
    };
    if !fds.is_empty() && (!at_frame_start || len == 0) {
        // Descriptors not on a frame's first byte, or with no bytes at all.
        return Ok(Step::Fail(IpcError::BadFds));
    }
    reading.fds.extend(fds);
    if len == 0 {
        return Ok(Step::Fail(end_of_stream(reading)));
    }
    match reading.payload.as_mut() {
        None => {
            reading.prefix_have += len;
            if reading.prefix_have < LEN_PREFIX {
                return Ok(Step::More);
            }
            let mut prefix: &[u8] = &reading.prefix;
            match reading.decoder.decode(&mut prefix) {
                Ok(Some(empty)) => Ok(Step::Frame(finish_frame(reading, empty))),
                Ok(None) => {
                    // Accepted by the decoder, so at most MAX_MESSAGE_LEN.
                    let len = u32::from_le_bytes(reading.prefix) as usize;
                    reading.payload = Some(Zeroizing::new(vec![0; len]));
                    reading.payload_have = 0;
                    Ok(Step::More)
                }
                Err(StreamFrameError::TooLong { len, .. }) => Ok(Step::Fail(
                    wg_messages::MessageError::TooLarge(usize::try_from(len).unwrap_or(usize::MAX))
                        .into(),
                )),
                Err(e) => Ok(Step::Fail(e.into())),
            }
        }
        Some(payload) => {
            reading.payload_have += len;
            if reading.payload_have < payload.len() {
                return Ok(Step::More);
            }
            let mut whole: &[u8] = payload;
            let decoded = reading.decoder.decode(&mut whole);
            payload.zeroize();
            reading.payload = None;
            match decoded {
                Ok(Some(message)) => Ok(Step::Frame(finish_frame(reading, message))),
                // The decoder was fed exactly the payload its prefix announced.
                Ok(None) => Ok(Step::Fail(
                    StreamFrameError::Truncated {
                        have: LEN_PREFIX,
                        need: LEN_PREFIX,
                    }
                    .into(),
                )),
                Err(e) => Ok(Step::Fail(e.into())),
            }
        }
    }
}

/// A completed frame: the message and the descriptors of its first byte; ready for the next.
fn finish_frame(reading: &mut Reading, message: Vec<u8>) -> Frame {
    reading.prefix_have = 0;
    reading.payload = None;
    reading.payload_have = 0;
    reading.reset_seen = false;
    (Zeroizing::new(message), std::mem::take(&mut reading.fds))
}

/// The peer closed its end: cleanly between frames, or inside one.
fn end_of_stream(reading: &Reading) -> IpcError {
    match &reading.payload {
        Some(payload) => StreamFrameError::Truncated {
            have: LEN_PREFIX + reading.payload_have,
            need: LEN_PREFIX + payload.len(),
        }
        .into(),
        None if reading.prefix_have > 0 => StreamFrameError::Truncated {
            have: reading.prefix_have,
            need: LEN_PREFIX,
        }
        .into(),
        None => IpcError::Closed,
    }
}
