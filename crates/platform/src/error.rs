//! The one error type of the platform layer's OS backends. The pure modules return their
//! own typed *reasons* (a frame's [`crate::af::AfDrop`], a name's
//! [`crate::af::TunNameError`], ...), which this type carries when a backend fails on them.

use crate::Role;
use crate::af::TunNameError;
use crate::pipe::PipeNameError;
use crate::policy::{DescriptorKind, PolicyError};

/// Why a platform operation (opening a TUN device, entering a sandbox, serving the UAPI
/// pipe) failed, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The requested interface name cannot be used for a TUN device on this OS.
    #[error(transparent)]
    Name(#[from] TunNameError),
    /// The interface name cannot be used for the Windows UAPI pipe.
    #[error(transparent)]
    PipeName(#[from] PipeNameError),
    /// A system call failed.
    #[error("{what} failed: {source}{hint}")]
    Os {
        /// What was being done (the call).
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
        /// What to do, if known (may be empty).
        hint: &'static str,
    },
    /// The sandbox policy could not be built.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The OS sandbox refused the role's profile (macOS `sandbox_init`).
    #[error(
        "the OS sandbox refused the {role} profile: {message}; this is a bug in wireguard-rs, please report it (--no-sandbox runs without it)"
    )]
    Sandbox {
        /// The role.
        role: &'static str,
        /// The sandbox's message.
        message: String,
    },
    /// A descriptor the role's policy has no rights for.
    #[error(
        "a {kind:?} descriptor was handed to a process whose sandbox does not expect one: this is a bug in wireguard-rs, please report it"
    )]
    UnexpectedDescriptor {
        /// Its kind.
        kind: DescriptorKind,
    },
    /// No free BSD tun unit.
    #[error(
        "no free tun device among /dev/tun0 to /dev/tun255: destroy unused ones (ifconfig tunN destroy) or create device nodes"
    )]
    NoFreeTun,
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
    /// `wintun.dll` lacks a function the Windows backend needs.
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
    /// The UAPI pipe exists already: another daemon serves this interface.
    #[error(
        "the UAPI pipe {path} exists already: another WireGuard implementation serves this \
         interface; stop it, or choose another interface name"
    )]
    PipeInUse {
        /// The pipe's path.
        path: String,
    },
    /// The role has no policy on this OS (the spawner on Windows: see
    /// [`crate::windows_policy`]).
    #[error("the {0:?} role does not run on this OS: the monitor starts data planes itself")]
    NoPolicy(Role),
}

impl PlatformError {
    /// A failed system call, with what to do about it (`hint` may be empty).
    #[allow(dead_code)] // Used by the Unix backends only.
    pub(crate) fn os(
        what: &'static str,
        source: impl Into<std::io::Error>,
        hint: &'static str,
    ) -> Self {
        PlatformError::Os {
            what,
            source: source.into(),
            hint,
        }
    }

    /// The error of the Win32 call `call` that just failed (its `GetLastError`).
    #[cfg(windows)]
    pub(crate) fn last(call: &'static str) -> Self {
        PlatformError::os(call, std::io::Error::last_os_error(), "")
    }
}

impl From<PlatformError> for std::io::Error {
    fn from(e: PlatformError) -> Self {
        match e {
            PlatformError::Os { source, .. } => source,
            other => std::io::Error::other(other),
        }
    }
}
