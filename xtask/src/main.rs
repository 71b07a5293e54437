//! `cargo xtask`: the project's automation, in Rust, so the build host needs only cargo.
//!
//! **Owns:** machine setup (`setup`), the full CI check (`ci`), the two-namespace tunnel
//! demo (`demo`), the installed layout (`install`, [`install`]), the tunnel benchmark (`bench`, [`netbench`]), fuzzing (`fuzz`) and the reusable network-namespace plumbing
//! ([`netns`]) that the demo, `netns-selftest` and the end-to-end tests share.
//!
//! Every external command it runs is bounded in time; everything it creates (namespaces,
//! veths, daemons, key files, sockets) is owned by an RAII guard and removed on success,
//! on error and on Ctrl-C/SIGTERM.
//!
//! **Linux only:** its tasks drive a Debian host; on any other OS the binary only says
//! so (each item below is gated on Linux, so the workspace still builds there).
#![forbid(unsafe_code)]

#[cfg(target_os = "linux")]
mod bench;
#[cfg(target_os = "linux")]
mod ci;
#[cfg(target_os = "linux")]
mod cmd;
#[cfg(target_os = "linux")]
mod deb;
#[cfg(target_os = "linux")]
mod demo;
#[cfg(target_os = "linux")]
mod fuzz;
#[cfg(target_os = "linux")]
mod install;
#[cfg(target_os = "linux")]
mod netbench;
#[cfg(target_os = "linux")]
mod netns;
#[cfg(target_os = "linux")]
mod nspawn;
#[cfg(target_os = "linux")]
mod selftest;
#[cfg(target_os = "linux")]
mod setup;
#[cfg(target_os = "linux")]
mod wine;

use std::process::ExitCode;

#[cfg(target_os = "linux")]
use clap::{Parser, Subcommand};

/// Project automation for wireguard-rs.
#[cfg(target_os = "linux")]
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[cfg(target_os = "linux")]
#[derive(Subcommand)]
enum Task {
    /// Install what CI and the demo need on a Debian machine (root; idempotent).
    Setup,
    /// Run every check in order: fmt, clippy, tests, KAT, cargo deny, install layout,
    /// netns self-test, nspawn test of the .deb.
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
    /// Tunnel benchmark (root): wireguard-rs against wireguard-go, boringtun and plain
    /// veth in two network namespaces, interleaved rounds, medians and ratios; results in
    /// target/bench/<UTC time>/. See docs/benchmarks.md.
    Bench {
        /// One round of 4 s tests (and fewer micro-benchmark samples).
        #[arg(long)]
        quick: bool,
        /// Also run the router micro-benchmarks (both AEAD backends) first.
        #[arg(long)]
        micro: bool,
        /// Only the micro-benchmarks (no root needed).
        #[arg(long)]
        no_tunnel: bool,
        /// Also measure a daemon built with the pure-Rust RustCrypto AEAD (built in
        /// target/bench-rustcrypto).
        #[arg(long)]
        tunnel_rustcrypto: bool,
        /// Another implementation: LABEL=CMD_TEMPLATE, `{if}` = interface name, `{bin}` =
        /// our release wireguard-rs; it must stay in the foreground. Repeatable.
        #[arg(long = "impl", value_name = "LABEL=CMD_TEMPLATE")]
        impls: Vec<String>,
        /// Rounds; implementations are interleaved within each (default 3, --quick 1).
        #[arg(long, value_name = "N")]
        rounds: Option<u32>,
        /// Seconds per iperf3 test (default 10, --quick 4).
        #[arg(long, value_name = "SECS")]
        duration: Option<u32>,
        /// Only these implementations (comma-separated labels: wireguard-rs,
        /// wireguard-rs-rustcrypto, wireguard-go, boringtun, wg-tunnel (the library tunnel), plain, or an --impl label).
        #[arg(long, value_name = "LABELS")]
        only: Option<String>,
        /// Only these tests (comma-separated: ping,tcp1,tcp4,tcppaced,udp,rss,hs; default all).
        #[arg(long, value_name = "TESTS")]
        tests: Option<String>,
        /// Peer counts for the idle-RSS test (default 0,1000,10000).
        #[arg(long, value_name = "N,N,..")]
        rss_peers: Option<String>,
        /// Handshake flood: initiations in flight at most (unanswered ones count as lost
        /// after 1 s).
        #[arg(long, value_name = "N", default_value_t = 128)]
        hs_window: usize,
        /// The paced TCP test (`tcppaced`): iperf3's rate, Mbit/s, below every
        /// implementation's ceiling, so that the ping beside it compares queueing at equal
        /// goodput rather than how busy each leaves the machine.
        #[arg(long, value_name = "MBIT_S", default_value_t = 500)]
        paced_rate: u32,
        /// Record a failing implementation (e.g. a tunnel that never comes up) and go on.
        #[arg(long)]
        keep_going: bool,
        /// Use the release binaries in target/release as they are (no cargo build).
        #[arg(long)]
        no_build: bool,
        /// Results folder (default target/bench/<UTC time>).
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
        /// Afterwards also run this external tunnel-bench script on the same binaries.
        #[arg(long, value_name = "PATH")]
        tunnel_bench: Option<std::path::PathBuf>,
    },
    /// Internal: the handshake-flood initiator of `bench`, run inside a namespace.
    #[command(hide = true)]
    HsFlood(netbench::hsflood::FloodArgs),
    /// Check the namespace plumbing (two namespaces, veth, ping) and its cleanup.
    NetnsSelftest,
    /// Install wireguard-rs (binaries, helpers, man pages, completions, systemd unit,
    /// sysusers.d, tmpfiles.d, docs) under DESTDIR/PREFIX; the layout packages are built
    /// from. See docs/packaging.md.
    Install {
        /// Staging directory prepended to every path (absolute; default: the real root).
        #[arg(long, value_name = "DIR")]
        destdir: Option<std::path::PathBuf>,
        /// Installation prefix; distribution packages use /usr.
        #[arg(long, value_name = "DIR", default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Directory of internal programs, absolute or relative to the prefix; the helpers
        /// go into wireguard-rs/ beneath it, and the monitor is built to look there.
        #[arg(long, value_name = "DIR", default_value = "libexec")]
        libexecdir: std::path::PathBuf,
        /// Use the binaries already built (checked to be built for this libexec dir).
        #[arg(long)]
        no_build: bool,
        /// Where the release binaries are (default: target/install/release, where this
        /// task builds them).
        #[arg(long, value_name = "DIR")]
        binaries: Option<std::path::PathBuf>,
        /// Only list what would be installed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Build target/deb/wireguard-rs_<version>-1_<arch>.deb from the `install` layout
    /// (dpkg-deb; checked with lintian if installed). See docs/packaging.md.
    Deb {
        /// Package the binaries already built (`install --no-build`).
        #[arg(long)]
        no_build: bool,
        /// Output directory (default target/deb).
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
    /// Boot a debootstrapped Debian under systemd-nspawn, install the .deb, run
    /// wireguard-rs@wgt0 against wireguard-go and check it (root). See docs/packaging.md.
    NspawnTest {
        /// Package the binaries already built.
        #[arg(long)]
        no_build: bool,
        /// Debian suite of the container (default: the host's).
        #[arg(long)]
        suite: Option<String>,
        /// Mirror for debootstrap (default: the host's apt source).
        #[arg(long)]
        mirror: Option<String>,
        /// Rebuild the cached root in target/nspawn.
        #[arg(long)]
        refresh: bool,
    },
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
    /// Build the portable crates' tests for Windows with MinGW and run them under Wine
    /// (throwaway prefix in the target directory; Debian's wine64).
    WineTest {
        /// Only this crate (repeatable; default: the portable set).
        #[arg(long = "crate", value_name = "NAME")]
        crates: Vec<String>,
        /// Seconds allowed to each test executable.
        #[arg(long, value_name = "SECS", default_value_t = 600)]
        timeout: u64,
    },
}

/// Every task drives Linux (apt, network namespaces, systemd-nspawn, the Linux daemon):
/// elsewhere the tool only says so.
#[cfg(not(target_os = "linux"))]
fn main() -> ExitCode {
    eprintln!(
        "xtask: the project's automation runs on a Linux (Debian) build host, not on {}; \
         to check this OS's build, run `cargo clippy --workspace --all-targets` there",
        std::env::consts::OS
    );
    ExitCode::FAILURE
}

#[cfg(target_os = "linux")]
fn main() -> ExitCode {
    let cli = Cli::parse();
    let needs_handler = matches!(
        cli.task,
        Task::Demo { .. }
            | Task::NetnsSelftest
            | Task::Ci
            | Task::Fuzz { .. }
            | Task::Bench { .. }
            | Task::Install { .. }
            | Task::Deb { .. }
            | Task::NspawnTest { .. }
            | Task::WineTest { .. }
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
            micro,
            no_tunnel,
            tunnel_rustcrypto,
            impls,
            rounds,
            duration,
            only,
            tests,
            rss_peers,
            hs_window,
            paced_rate,
            keep_going,
            no_build,
            out,
            tunnel_bench,
        } => bench::run(&bench::BenchArgs {
            quick,
            micro,
            no_tunnel,
            tunnel_rustcrypto,
            tunnel_bench,
            impls,
            rounds,
            duration,
            only,
            tests,
            rss_peers,
            hs_window,
            paced_rate,
            keep_going,
            no_build,
            out,
        })
        .map(|()| ExitCode::SUCCESS),
        Task::HsFlood(args) => netbench::hsflood::run(&args).map(|()| ExitCode::SUCCESS),
        Task::NetnsSelftest => selftest::run(),
        Task::Install {
            destdir,
            prefix,
            libexecdir,
            no_build,
            binaries,
            dry_run,
        } => install::run(&install::InstallArgs {
            destdir,
            prefix,
            libexecdir: Some(libexecdir),
            no_build,
            binaries,
            dry_run,
        })
        .map(|()| ExitCode::SUCCESS),
        Task::Deb { no_build, out } => {
            deb::run(&deb::DebArgs { no_build, out }).map(|()| ExitCode::SUCCESS)
        }
        Task::NspawnTest {
            no_build,
            suite,
            mirror,
            refresh,
        } => nspawn::run(&nspawn::NspawnArgs {
            no_build,
            suite,
            mirror,
            refresh,
        }),
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
        Task::WineTest { crates, timeout } => wine::run(&wine::WineTestArgs {
            crates,
            timeout_secs: timeout,
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
