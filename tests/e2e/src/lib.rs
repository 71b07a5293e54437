//! Shared helpers of the wireguard-rs end-to-end tests (`tests/e2e/tests/*.rs`).
//!
//! **Owns:** the per-test environment ([`Env`]: unique names, a private directory for
//! keys and logs, the daemon binaries), daemons of each implementation under test
//! ([`Daemon`], [`Impl`]), the standard two-host tunnel ([`Pair`]), parsers for `wg show
//! dump` and `wg showconf` output, a raw UAPI client and traffic helpers (ping, a TCP
//! transfer compared by hash).
//!
//! **Trusts:** `ip`, `ping`, `wg`, `wg-quick`, `wireguard-go`, `boringtun-cli` and the
//! helper binary `wg-e2e-helper`; the namespace plumbing of `wg-netns`.
//!
//! Every resource is an RAII guard, dropped in a safe order (daemons, then links, then
//! namespaces, then the private directory), on success and on failure; every wait is
//! bounded; processes are stopped only by the PID the test started.
//!
//! **Linux only:** network namespaces, the Linux daemon and its sandbox. On every other OS
//! this crate compiles to an empty library (see the platform table in the README).
#![cfg(target_os = "linux")]
#![forbid(unsafe_code)]

pub mod daemon;
pub mod embedded;
pub mod env;
pub mod fake_monitor;
pub mod net;
pub mod proc;
pub mod topo;
pub mod uapi;
pub mod wgtool;

pub use daemon::{Daemon, Impl};
pub use env::{Env, SKIP_MESSAGE};
pub use net::{
    LinkCounters, link_counters, link_exists, link_stats, ping, ping_fails, ping_ok, tcp_transfer,
    wait_until,
};
pub use topo::{Pair, PairSpec, Solo, Underlay};
pub use wg_netns::cmd;
pub use wg_netns::netns::{self, Namespace, PingStats, VethPair};
pub use wgtool::{Conf, Dump, DumpPeer};

/// Creates the test's [`Env`], or prints [`SKIP_MESSAGE`] and returns `Ok(())` from the
/// calling test when it cannot run here (not root, or no network namespaces). Use in a
/// test returning `anyhow::Result<()>`: `let env = wg_e2e::setup!("xx");` where `xx` is a
/// short tag unique among the tests of this package.
#[macro_export]
macro_rules! setup {
    ($tag:expr) => {
        match $crate::Env::new($tag, env!("CARGO_BIN_EXE_wg-e2e-helper"))? {
            Some(env) => env,
            None => return Ok(()),
        }
    };
}
