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
