//! The macOS backend: utun (the TUN device) and the sandbox entry of the workers.
//!
//! **What has run**: the logic it takes its decisions from ([`crate::af`]'s header and
//! utun naming, [`crate::policy`]'s profiles and limits) is unit-tested on Linux in CI.
//! This module itself is compiled and linted for `x86_64-apple-darwin` and
//! `aarch64-apple-darwin` (`cargo clippy --all-targets`), and **has not yet run on macOS**:
//! no macOS machine was available. It follows Apple's documented interfaces (the kernel
//! control socket of `<sys/kern_control.h>`, `<net/if_utun.h>`, `sandbox_init(3)`,
//! `setrlimit(2)`); the SBPL profiles in particular must be tried on a Mac before a release.

mod sandbox;
mod utun;

pub use sandbox::enter_sandbox;
pub use utun::Utun;

/// Why the macOS backend failed, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum MacosError {
    /// The requested interface name is not a utun name.
    #[error(transparent)]
    Name(#[from] crate::af::TunNameError),
    /// A system call failed.
    #[error("{what} failed: {source}{hint}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
        /// What to do, if known (may be empty).
        hint: &'static str,
    },
    /// The sandbox policy could not be built.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// `sandbox_init` refused the profile.
    #[error(
        "the macOS sandbox refused the {role} profile: {message}; this is a bug in wireguard-rs, please report it (--no-sandbox runs without it)"
    )]
    Sandbox {
        /// The role.
        role: &'static str,
        /// The sandbox's message.
        message: String,
    },
}

impl MacosError {
    fn os(what: &'static str, source: impl Into<std::io::Error>, hint: &'static str) -> Self {
        MacosError::Os {
            what,
            source: source.into(),
            hint,
        }
    }
}
