//! The Windows backend: Wintun for the TUN device, the named-pipe UAPI endpoint, and
//! workers started with restricted tokens inside job objects.
//!
//! Each module is a thin wrapper over the documented Win32 (or Wintun) interface and
//! takes its decisions from the pure layer: [`crate::pipe`] (pipe path, security
//! descriptor) and [`crate::windows_policy`] (tokens, jobs, handles).
//!
//! What has run where: the pipe server and the pure helpers run under Wine in CI
//! (`cargo xtask wine-test`); Wintun needs its kernel driver, which Wine does not have, so
//! only its loader's "DLL missing" path runs there; [`process`] is compile-checked only
//! and has not run on Windows yet.

pub mod pipe_server;
pub mod process;
pub mod wintun;

use crate::pipe::PipeNameError;

/// What can go wrong in the Windows backend.
#[derive(Debug, thiserror::Error)]
pub enum WindowsError {
    /// `wintun.dll` could not be loaded from beside the executable or from System32.
    #[error(
        "wintun.dll was not found beside the executable or in System32 (Windows error {code}): \
         download Wintun from https://www.wintun.net/ and put the wintun.dll for this machine's \
         architecture beside wireguard-rs.exe"
    )]
    WintunMissing {
        /// The Win32 error of `LoadLibraryExW`.
        code: u32,
    },
    /// `wintun.dll` lacks a function this backend needs.
    #[error(
        "wintun.dll has no function {name}: it is too old or not Wintun; install the current \
         release from https://www.wintun.net/"
    )]
    WintunFunctionMissing {
        /// The missing export.
        name: &'static str,
    },
    /// The ring capacity asked of Wintun is outside what it accepts.
    #[error(
        "Wintun ring capacity {0:#x} is invalid: it must be a power of two from 128 KiB to 64 MiB"
    )]
    BadRingCapacity(u32),
    /// The interface name cannot be used (see [`crate::pipe`]).
    #[error(transparent)]
    Name(#[from] PipeNameError),
    /// The UAPI pipe exists already: another daemon serves this interface.
    #[error(
        "the UAPI pipe {path} exists already: another WireGuard implementation serves this \
         interface; stop it, or choose another interface name"
    )]
    PipeInUse {
        /// The pipe's path.
        path: String,
    },
    /// The role has no Windows policy (the spawner: see [`crate::windows_policy`]).
    #[error("the {0:?} role does not run on Windows: the monitor starts data planes itself")]
    NoPolicy(crate::Role),
    /// A Win32 call failed.
    #[error("{call} failed: {source}")]
    Os {
        /// The Win32 function.
        call: &'static str,
        /// The error it reported.
        #[source]
        source: std::io::Error,
    },
}

impl WindowsError {
    /// The error of the Win32 call `call` that just failed (its `GetLastError`).
    pub(crate) fn last(call: &'static str) -> Self {
        WindowsError::Os {
            call,
            source: std::io::Error::last_os_error(),
        }
    }
}

impl From<WindowsError> for std::io::Error {
    fn from(e: WindowsError) -> Self {
        match e {
            WindowsError::Os { source, .. } => source,
            other => std::io::Error::other(other),
        }
    }
}
