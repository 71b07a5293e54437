//! The OS side of the IPC between the wireguard-rs processes (monitor, keyd, datad): the
//! channel, descriptor passing and the start of a worker process.
//!
//! **Owns:** three transports with the same interface ([`Channel`]):
//! - a `SOCK_SEQPACKET` socketpair ([`seqpacket_pair`]) with `SCM_RIGHTS` descriptor passing:
//!   one datagram per message, so the kernel keeps the boundaries. What the daemon uses on
//!   Linux, FreeBSD and NetBSD;
//! - a `SOCK_STREAM` socketpair ([`stream_pair`], [`Channel::from_stream_fd`]) for systems
//!   without `SOCK_SEQPACKET` (macOS uses it, [`pair`]): every message framed with
//!   `wg-platform`'s [`stream_frame`](wg_platform::stream_frame) (a `u32` little-endian length,
//!   then the message), its descriptors carried by the `sendmsg` that writes the frame's
//!   first byte, and a frame the socket took only in part completed before the next one
//!   starts. It builds, and its tests run, on every system here, Linux included;
//! - an in-memory pair for the in-process mode (tests and embedding) that still encodes every
//!   message, so all modes run the same decoding path.
//!
//! Also: recognising a peer's `SIGSYS` and failure reports; inherited descriptors; and the
//! start of a process ([`worker`]: a worker's first steps and sandbox, logging, the data
//! plane's default number of crypto threads).
//! The messages themselves and their encoding are `wg-messages`' (re-exported here as
//! [`messages`], [`encode`] and [`decode`]), so code that only speaks the protocol (the
//! device core, the simulation) does not link any of this.
//!
//! **Trusts:** nothing it receives. A peer process may be compromised: every message is
//! size-checked (a stream frame's length before any of its bytes are buffered) and fully
//! decoded or rejected, at most [`MAX_FDS`] descriptors come with one message (on a stream:
//! only with a frame's first byte), memory held per channel is bounded by a message or two,
//! and any error ends the channel (a stream channel shuts its socket down).
//!
//! **May depend on:** `wg-messages`, `wg-platform` (stream framing, pure), `nix` (sockets),
//! `tokio` (readiness), `zeroize`, `tracing`, `wg-sandbox` (worker start-up; on Linux also
//! syscall names in `SIGSYS` reports) and `tracing-subscriber` (logging); on macOS `libc`
//! (`SO_NOSIGPIPE`). The `unsafe` operations are adopting descriptors the kernel just
//! installed for us from `SCM_RIGHTS` (and, at start-up, the ones inherited across `exec`),
//! registering a socket with the reactor, and on macOS one `setsockopt`.
//!
//! **Per OS:** Linux, FreeBSD, NetBSD: all three transports, the daemon's being
//! `SOCK_SEQPACKET`; descriptors arrive close-on-exec (`MSG_CMSG_CLOEXEC`). macOS has no
//! `SOCK_SEQPACKET`: the stream and in-memory transports; received descriptors are made
//! close-on-exec right after `recvmsg` (macOS has no `MSG_CMSG_CLOEXEC`), and `SO_NOSIGPIPE`
//! replaces `MSG_NOSIGNAL`; a worker's failure report goes in a frame like any message.
//! Windows, OpenBSD, Android, iOS: this crate compiles to an empty library (Windows passes
//! handles differently; the others are not checked here). See the platform table in the
//! README.
#![cfg(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
))]
#![deny(unsafe_code)]

mod channel;
mod stream;
pub mod worker;

#[cfg(not(target_os = "macos"))]
pub use channel::seqpacket_pair;
pub use channel::{Channel, Received, pair};
pub use stream::stream_pair;
pub use wg_messages::{MAX_MESSAGE_LEN, MessageError, PROTOCOL_VERSION, encode, messages};
pub use wg_platform::stream_frame::StreamFrameError;

use serde::de::DeserializeOwned;

/// Most file descriptors one message may carry.
pub const MAX_FDS: usize = 8;

/// Why an IPC operation failed. Every variant ends the channel.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The peer process closed its end (it exited or was killed).
    #[error("the other process closed the IPC channel")]
    Closed,
    /// A message did not encode, decode or greet as it must (see [`MessageError`]).
    #[error(transparent)]
    Message(#[from] MessageError),
    /// Too many descriptors, or ancillary data was truncated.
    #[error("IPC message carried unexpected or truncated file descriptors")]
    BadFds,
    /// The socket failed.
    #[error("IPC socket error: {0}")]
    Io(#[from] std::io::Error),
    /// A stream channel's peer ended the stream inside a message (it died mid-write) or
    /// broke the framing.
    #[error(transparent)]
    Framing(#[from] StreamFrameError),
    /// The peer process failed and said why before exiting ([`FAILURE_REPORT_PREFIX`]).
    #[error("it failed: {0}")]
    PeerFailed(String),
    /// The peer process was stopped by its seccomp filter for making this syscall.
    #[error("the other process made a forbidden syscall: {name} ({number})")]
    Seccomp {
        /// The syscall number.
        number: u32,
        /// Its name, if known.
        name: &'static str,
    },
}

/// First bytes of the datagram a sandboxed process's `SIGSYS` handler sends on its IPC
/// socket (followed by the syscall number, little-endian). No postcard message starts
/// with 0xff 0xff, so it cannot be confused with one.
pub const SIGSYS_REPORT_PREFIX: [u8; 8] = [0xff, 0xff, b'S', b'I', b'G', b'S', b'Y', b'S'];

/// First bytes of the datagram a worker sends on its channel to the monitor when it fails
/// (followed by the reason in UTF-8, at most [`MAX_FAILURE_REPORT`] bytes), so that the
/// reason reaches the user even when the worker's standard error goes nowhere (background
/// mode). No postcard message starts with 0xff 0xff.
pub const FAILURE_REPORT_PREFIX: [u8; 8] = [0xff, 0xff, b'F', b'A', b'I', b'L', b'E', b'D'];
/// Longest failure reason carried, in bytes.
pub const MAX_FAILURE_REPORT: usize = 512;

/// The datagram that reports `reason` ([`FAILURE_REPORT_PREFIX`]), cut to
/// [`MAX_FAILURE_REPORT`] bytes on a character boundary.
pub fn failure_report(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_FAILURE_REPORT);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut bytes = FAILURE_REPORT_PREFIX.to_vec();
    bytes.extend_from_slice(reason.get(..end).unwrap_or_default().as_bytes());
    bytes
}

/// Decodes one received datagram: a `SIGSYS` report from a sandboxed peer becomes
/// [`IpcError::Seccomp`], anything else must be exactly one message ([`wg_messages::decode`]).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, IpcError> {
    if let Some((prefix, rest)) = bytes.split_first_chunk::<8>()
        && *prefix == SIGSYS_REPORT_PREFIX
        && let Ok(number) = <[u8; 4]>::try_from(rest)
    {
        let number = u32::from_le_bytes(number);
        return Err(IpcError::Seccomp {
            number,
            name: syscall_name(number),
        });
    }
    if let Some(reason) = bytes.strip_prefix(&FAILURE_REPORT_PREFIX) {
        // Shown to the user: bounded, and no control characters from a hostile peer.
        let reason = String::from_utf8_lossy(reason.get(..MAX_FAILURE_REPORT).unwrap_or(reason));
        let clean: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        return Err(IpcError::PeerFailed(clean));
    }
    Ok(wg_messages::decode(bytes)?)
}

/// The name of syscall `number` on this machine's architecture, for `SIGSYS` reports.
#[cfg(target_os = "linux")]
fn syscall_name(number: u32) -> &'static str {
    wg_sandbox::syscall_name(number).unwrap_or("unknown")
}

/// Only Linux has the seccomp filters that send `SIGSYS` reports; a report from elsewhere
/// is still recognised, with the number only.
#[cfg(not(target_os = "linux"))]
fn syscall_name(_number: u32) -> &'static str {
    "unknown"
}

/// Environment variable naming the descriptor of a worker's channel to the monitor.
pub const IPC_FD_ENV: &str = "WG_RS_IPC_FD";

/// Adopts a descriptor inherited across `exec` whose number is in environment variable
/// `var` (the monitor's channel for workers; `WG_TUN_FD`/`WG_UAPI_FD` as wireguard-go
/// defines them). The variable is removed, the descriptor checked to be open and marked
/// close-on-exec so it does not leak further.
#[allow(unsafe_code)]
pub fn inherited_fd(var: &str) -> Result<Option<std::os::fd::OwnedFd>, IpcError> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
    let Ok(value) = std::env::var(var) else {
        return Ok(None);
    };
    let raw: RawFd = value.trim().parse().map_err(|_| {
        IpcError::Io(std::io::Error::other(format!(
            "{var}={value} is not a file descriptor number"
        )))
    })?;
    if raw < 0 {
        return Err(IpcError::BadFds);
    }
    // SAFETY: the descriptor is only borrowed for the F_GETFD probe below, which fails
    // harmlessly with EBADF if the number is not open.
    let probe = unsafe { BorrowedFd::borrow_raw(raw) };
    fcntl(probe, FcntlArg::F_GETFD).map_err(|e| {
        IpcError::Io(std::io::Error::other(format!(
            "{var}={raw} is not an open descriptor: {e}"
        )))
    })?;
    // The descriptor is open (checked above) and was handed to this process for this
    // purpose by its parent.
    // SAFETY: it is adopted exactly once: the variable is removed from the environment
    // before anything else could read it again.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: single-threaded start-up: nothing else reads or writes the environment now.
    unsafe { std::env::remove_var(var) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(std::io::Error::from)?;
    Ok(Some(owned))
}

/// Makes `fd` survive `exec` (clears close-on-exec), for handing it to a child process.
pub fn make_inheritable(fd: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok(())
}

#[cfg(test)]
mod sigsys_tests {
    use super::*;
    use crate::messages::KeydToMonitor;

    #[test]
    fn failure_reports_are_recognised_bounded_and_cleaned() {
        let report = failure_report("cannot sandbox the key process: mlockall: EPERM");
        match decode::<KeydToMonitor>(&report) {
            Err(IpcError::PeerFailed(reason)) => {
                assert_eq!(reason, "cannot sandbox the key process: mlockall: EPERM");
            }
            other => panic!("{other:?}"),
        }
        let long = "é".repeat(1000);
        let report = failure_report(&long);
        assert!(report.len() <= FAILURE_REPORT_PREFIX.len() + MAX_FAILURE_REPORT);
        let mut hostile = FAILURE_REPORT_PREFIX.to_vec();
        hostile.extend_from_slice(b"line\n\x1b[31mred\x00");
        hostile.extend(std::iter::repeat_n(b'x', 4096));
        match decode::<KeydToMonitor>(&hostile) {
            Err(IpcError::PeerFailed(reason)) => {
                assert!(!reason.chars().any(char::is_control), "{reason:?}");
                assert!(reason.len() <= MAX_FAILURE_REPORT, "{}", reason.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sigsys_reports_are_recognised() {
        let mut report = SIGSYS_REPORT_PREFIX.to_vec();
        report.extend_from_slice(&41u32.to_le_bytes());
        match decode::<KeydToMonitor>(&report) {
            Err(IpcError::Seccomp { number: 41, name }) => {
                if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
                    assert_eq!(name, "socket");
                }
            }
            other => panic!("{other:?}"),
        }
    }
}
