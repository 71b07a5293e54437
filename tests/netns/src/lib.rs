//! Network-namespace plumbing shared by `cargo xtask` (demo, netns-selftest) and the
//! end-to-end tests (`wg-e2e`).
//!
//! **Owns:** running external commands bounded in time ([`cmd`]), background processes
//! stopped by the PID we started ([`cmd::Background`]), unique per-run names, the
//! [`netns::Namespace`] and [`netns::VethPair`] RAII types and ping statistics.
//!
//! **Trusts:** `ip` (iproute2) and `ping` (iputils) found on `PATH`.
//!
//! Everything it creates is owned by a guard and removed on drop, on success and on
//! error; nothing here kills a process by name.
//!
//! **Linux only:** network namespaces. On every other OS this crate compiles to an empty
//! library (see the platform table in the README).
#![cfg(target_os = "linux")]
#![forbid(unsafe_code)]

pub mod cmd;
pub mod netns;
pub mod private_dir;
