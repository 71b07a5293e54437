//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! **Owns:** machine setup (`setup`), the full CI check (`ci`), the two-namespace tunnel
//! demo (`demo`), fuzzing (`fuzz`) and the reusable network-namespace plumbing
//! ([`netns`]) that the demo, `netns-selftest` and the end-to-end tests share.
//!
//! Every external command it runs is bounded in time; everything it creates (namespaces,
//! veths, daemons, key files, sockets) is owned by an RAII guard and removed on success,
//! on error and on Ctrl-C/SIGTERM.
#![forbid(unsafe_code)]

mod bench;
mod ci;
mod cmd;
mod demo;
mod fuzz;
mod netns;
mod selftest;
mod setup;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Project automation for wireguard-rs.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what CI and the demo need on a Debian machine (root; idempotent).
    Setup,
    /// Run every check in order: fmt, clippy, tests, KAT, cargo deny, netns self-test.
    Ci,
    /// Two network namespaces, a WireGuard tunnel, ping and iperf3 throughput (root).
    Demo {
        /// Daemon command run in each namespace via `sh -c`; `{if}` is the interface
        /// name, `{bin}` the release-built wireguard-rs. It must stay in the foreground.
        #[arg(long = "impl", value_name = "CMD_TEMPLATE")]
        impl_template: Option<String>,
        /// Duration of the iperf3 throughput test.
        #[arg(long, value_name = "N", default_value_t = 5)]
        seconds: u32,
    },
    /// Router micro-benchmarks (both AEAD backends), then the tunnel benchmark against
    /// wireguard-go and boringtun (root; skipped otherwise). See docs/benchmarks.md.
    Bench {
        /// Fewer samples, and one short tunnel round (ping and 1-stream TCP).
        #[arg(long)]
        quick: bool,
        /// Only the micro-benchmarks.
        #[arg(long)]
        no_tunnel: bool,
        /// Also run the tunnel with a daemon built with the pure-Rust RustCrypto AEAD
        /// (in target/bench-rustcrypto).
        #[arg(long)]
        tunnel_rustcrypto: bool,
        /// The tunnel-bench script (default: $WG_TUNNEL_BENCH, ../shared/bench/tunnel-bench
        /// beside the workspace, or tunnel-bench on PATH).
        #[arg(long, value_name = "PATH")]
        tunnel_bench: Option<std::path::PathBuf>,
    },
    /// Check the namespace plumbing (two namespaces, veth, ping) and its cleanup.
    NetnsSelftest,
    /// Run cargo-fuzz targets on stable (RUSTC_BOOTSTRAP=1), each for N seconds.
    Fuzz {
        /// The target to run (default: every target in turn).
        target: Option<String>,
        /// Time per target.
        #[arg(long, value_name = "N", default_value_t = 60)]
        seconds: u32,
        /// List the targets and exit.
        #[arg(long)]
        list: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let needs_handler = matches!(
        cli.task,
        Task::Demo { .. } | Task::NetnsSelftest | Task::Ci | Task::Fuzz { .. } | Task::Bench { .. }
    );
    if needs_handler && let Err(e) = cmd::install_signal_handler() {
        eprintln!("xtask: error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.task {
        Task::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Task::Ci => ci::run().map(|()| ExitCode::SUCCESS),
        Task::Demo {
            impl_template,
            seconds,
        } => demo::run(&demo::DemoArgs {
            impl_template,
            seconds,
        }),
        Task::Bench {
            quick,
            no_tunnel,
            tunnel_rustcrypto,
            tunnel_bench,
        } => bench::run(&bench::BenchArgs {
            quick,
            no_tunnel,
            tunnel_rustcrypto,
            tunnel_bench,
        })
        .map(|()| ExitCode::SUCCESS),
        Task::NetnsSelftest => selftest::run(),
        Task::Fuzz {
            target,
            seconds,
            list,
        } => fuzz::run(&fuzz::FuzzArgs {
            target,
            seconds,
            list,
        })
        .map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            if cmd::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
