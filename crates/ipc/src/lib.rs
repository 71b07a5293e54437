//! The IPC protocol between the wireguard-rs processes (monitor, keyd, datad).
//!
//! **Owns:** the message types each pair of processes exchanges ([`messages`]), their
//! postcard encoding with a strict size limit and no trailing bytes, and two transports
//! with the same interface ([`Channel`]): a `SOCK_SEQPACKET` socketpair with `SCM_RIGHTS`
//! fd passing between processes, and an in-memory pair for the in-process mode (tests and
//! embedding) that still encodes every message, so both modes run the same decoding path.
//!
//! **Trusts:** nothing it receives. A peer process may be compromised: every datagram is
//! size-checked and fully decoded or rejected, and any decode error closes the channel.
//!
//! **May depend on:** `wg-wire`, `serde`, `postcard`, `nix` (sockets), `tokio` (readiness),
//! `zeroize`. The one `unsafe` operation is adopting file descriptors the kernel just
//! installed for us from `SCM_RIGHTS`.
#![deny(unsafe_code)]

mod channel;
pub mod messages;
pub mod worker;

pub use channel::{Channel, Received, seqpacket_pair};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version of the message set; both ends send it first and refuse a mismatch.
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest encoded message. Bulk data (stats for many peers) is sent in chunks below it.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Most file descriptors one message may carry.
pub const MAX_FDS: usize = 8;

/// Why an IPC operation failed. Every variant ends the channel.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The peer process closed its end (it exited or was killed).
    #[error("the other process closed the IPC channel")]
    Closed,
    /// A message failed to decode: the peer is buggy or compromised.
    #[error("undecodable IPC message ({0}); closing the channel")]
    Decode(postcard::Error),
    /// A message decoded with bytes left over.
    #[error("IPC message has {0} trailing bytes; closing the channel")]
    Trailing(usize),
    /// A message is larger than [`MAX_MESSAGE_LEN`].
    #[error("IPC message of {0} bytes exceeds the limit of {MAX_MESSAGE_LEN}")]
    TooLarge(usize),
    /// Too many descriptors, or ancillary data was truncated.
    #[error("IPC message carried unexpected or truncated file descriptors")]
    BadFds,
    /// Encoding failed (a bug: every message type is encodable).
    #[error("could not encode IPC message: {0}")]
    Encode(postcard::Error),
    /// The peer speaks another protocol version.
    #[error(
        "IPC protocol version mismatch: ours {ours}, theirs {theirs}; install matching binaries"
    )]
    Version {
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The socket failed.
    #[error("IPC socket error: {0}")]
    Io(#[from] std::io::Error),
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

/// Encodes a message, refusing anything over [`MAX_MESSAGE_LEN`]. The buffer is sized
/// exactly before the message is written (a growing vector would leave copies of session
/// keys in the memory it frees); callers zeroize it after sending.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, IpcError> {
    let len = postcard::serialize_with_flavor(msg, postcard::ser_flavors::Size::default())
        .map_err(IpcError::Encode)?;
    if len > MAX_MESSAGE_LEN {
        return Err(IpcError::TooLarge(len));
    }
    let mut bytes = vec![0u8; len];
    let written = postcard::to_slice(msg, &mut bytes)
        .map_err(IpcError::Encode)?
        .len();
    bytes.truncate(written);
    Ok(bytes)
}

/// Decodes exactly one message: over-long input and trailing bytes are errors
/// (`postcard::from_bytes` alone would ignore a remainder).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, IpcError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(IpcError::TooLarge(bytes.len()));
    }
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
    let (msg, rest) = postcard::take_from_bytes(bytes).map_err(IpcError::Decode)?;
    if !rest.is_empty() {
        return Err(IpcError::Trailing(rest.len()));
    }
    Ok(msg)
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

/// Logging for every wireguard-rs process, configured as wireguard-go's is: `LOG_LEVEL`
/// is `error`, `verbose` (info) or `debug`; unset means warnings and errors; `silent`
/// turns it off. Lines go to standard error, tagged with the process.
pub fn init_logging(process: &'static str) {
    let level = match std::env::var("LOG_LEVEL").as_deref() {
        Ok("silent") => "off",
        Ok("error") => "error",
        Ok("verbose") => "info",
        Ok("debug") => "debug",
        _ => "warn",
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    tracing::debug!("{process} logging at {level}");
}

/// Most crypto helper threads [`default_crypto_threads`] picks: past this, one data-plane
/// event loop cannot keep them busy.
const MAX_DEFAULT_CRYPTO_THREADS: usize = 7;

/// The data plane's default number of crypto helper threads: half the cores, minus the
/// event loop's, at most [`MAX_DEFAULT_CRYPTO_THREADS`]; none on one or two cores. The
/// other half is left to the kernel's share of each packet (TUN and UDP copies, TCP) and
/// to the applications: on a 2-core machine one helper thread cost a quarter of the
/// throughput and a third more CPU per byte (`docs/benchmarks.md`).
pub fn default_crypto_threads() -> u16 {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    crypto_threads_for(cores)
}

fn crypto_threads_for(cores: usize) -> u16 {
    let helpers = (cores / 2)
        .saturating_sub(1)
        .min(MAX_DEFAULT_CRYPTO_THREADS);
    u16::try_from(helpers).unwrap_or(0)
}

#[cfg(test)]
mod crypto_thread_tests {
    use super::crypto_threads_for;

    #[test]
    fn half_the_cores_minus_the_event_loop() {
        let picks: Vec<u16> = [1, 2, 3, 4, 8, 16, 64].map(crypto_threads_for).to_vec();
        assert_eq!(picks, [0, 0, 0, 1, 3, 7, 7]);
    }
}
