//! The BSD backend: tun(4) on FreeBSD, NetBSD and OpenBSD, Capsicum on FreeBSD,
//! pledge/unveil on OpenBSD. NetBSD has no process sandbox of this kind: there the workers
//! are confined by their own uids only.
//!
//! **What has run**: the logic it takes its decisions from ([`crate::af`]'s header and tun
//! naming, [`crate::policy`]'s Capsicum rights and pledge/unveil lists) is unit-tested on
//! Linux in CI. This module is compiled and linted for `x86_64-unknown-freebsd` and
//! `x86_64-unknown-netbsd` (`cargo clippy --all-targets`) and **has not yet run on any
//! BSD**. The OpenBSD parts are not even compiled here (OpenBSD is a tier-3 Rust target
//! without a prebuilt standard library), so they are kept to a few lines.

#[cfg(target_os = "freebsd")]
mod capsicum;
#[cfg(target_os = "openbsd")]
mod pledge;
mod tun;

#[cfg(target_os = "freebsd")]
pub use capsicum::enter_capsicum;
#[cfg(target_os = "openbsd")]
pub use pledge::enter_pledge;
pub use tun::BsdTun;

/// Why the BSD backend failed, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BsdError {
    /// The requested interface name cannot be used.
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
    /// A descriptor the role's policy has no rights for.
    #[error(
        "a {kind:?} descriptor was handed to a process whose sandbox does not expect one: this is a bug in wireguard-rs, please report it"
    )]
    UnexpectedDescriptor {
        /// Its kind.
        kind: crate::policy::DescriptorKind,
    },
    /// No free tun unit.
    #[error(
        "no free tun device among /dev/tun0 to /dev/tun255: destroy unused ones (ifconfig tunN destroy) or create device nodes"
    )]
    NoFreeTun,
}

impl BsdError {
    fn os(what: &'static str, source: impl Into<std::io::Error>, hint: &'static str) -> Self {
        BsdError::Os {
            what,
            source: source.into(),
            hint,
        }
    }
}
