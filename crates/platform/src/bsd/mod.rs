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
pub use tun::{BsdTun, destroy_interface};
