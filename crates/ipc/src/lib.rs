//! The OS side of the IPC between the wireguard-rs processes (monitor, keyd, datad): the
//! channel, descriptor passing and the start of a worker process.
//!
//! **Owns:** two transports with the same interface ([`Channel`]): a `SOCK_SEQPACKET`
//! socketpair with `SCM_RIGHTS` fd passing between processes, and an in-memory pair for the
//! in-process mode (tests and embedding) that still encodes every message, so both modes run
//! the same decoding path; recognising a sandboxed peer's `SIGSYS` report; inherited
//! descriptors; the start of a process ([`worker`]: a worker's first steps, logging, the
//! data plane's default number of crypto threads).
//! The messages themselves and their encoding are `wg-messages`' (re-exported here as
//! [`messages`], [`encode`] and [`decode`]), so code that only speaks the protocol (the
//! device core, the simulation) does not link any of this.
//!
//! **Trusts:** nothing it receives. A peer process may be compromised: every datagram is
//! size-checked and fully decoded or rejected, and any decode error closes the channel.
//!
//! **May depend on:** `wg-messages`, `wg-sandbox` (syscall names in `SIGSYS` reports and
//! worker start-up), `nix` (sockets), `tokio` (readiness), `zeroize`, `tracing`. The one
//! `unsafe` operation is adopting file descriptors the kernel just installed for us from
//! `SCM_RIGHTS` (and, at start-up, the ones inherited across `exec`).
//!
//! **Linux only:** `SOCK_SEQPACKET` channels and the Linux sandbox at worker start-up
//! (macOS has no `SOCK_SEQPACKET`; the platform layer's stream framing is its replacement).
//! On every other OS this crate compiles to an empty library (see the platform table in the
//! README).
#![cfg(target_os = "linux")]
#![deny(unsafe_code)]

mod channel;
pub mod worker;

pub use channel::{Channel, Received, seqpacket_pair};
pub use wg_messages::{MAX_MESSAGE_LEN, MessageError, PROTOCOL_VERSION, encode, messages};

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
            name: wg_sandbox::syscall_name(number).unwrap_or("unknown"),
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
                if cfg!(target_arch = "x86_64") {
                    assert_eq!(name, "socket");
                }
            }
            other => panic!("{other:?}"),
        }
    }
}
