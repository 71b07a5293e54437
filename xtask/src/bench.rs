//! `cargo xtask bench`: the side-by-side tunnel benchmark of our release daemon against
//! wireguard-go, boringtun and plain veth ([`crate::netbench`]), and on request the
//! router micro-benchmarks and the external `tunnel-bench` script.
//! `docs/benchmarks.md` explains the figures.
//!
//! 1. `--micro` (or `--no-tunnel`): `cargo bench -p wg-router --bench aead` with
//!    `--no-default-features` (RustCrypto) and with the default backend (ring), then
//!    `--bench allowed_ips`; a summary table puts the two backends' medians side by side.
//! 2. Unless `--no-tunnel`, as root: builds the release daemon (and, with
//!    `--tunnel-rustcrypto`, a second one with the RustCrypto AEAD in
//!    `target/bench-rustcrypto`) and runs our harness ([`crate::netbench`]): every
//!    implementation found, interleaved round by round, medians and ratios to
//!    wireguard-rs, results in `target/bench/<UTC time>/`.
//! 3. `--tunnel-bench PATH`: afterwards also runs that external script on the same
//!    binaries (a neutral yardstick; its output is echoed and logged).
//!
//! Everything is bounded: each cargo command and each measurement has a deadline, and
//! Ctrl-C unwinds through the RAII guards (namespaces, daemons, files).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, Background};
use crate::netbench::{self, impls};

/// Arguments of `cargo xtask bench`.
#[allow(clippy::struct_excessive_bools)]
pub(crate) struct BenchArgs {
    /// One round of short tests; fewer micro-benchmark samples.
    pub(crate) quick: bool,
    /// Run the router micro-benchmarks first.
    pub(crate) micro: bool,
    /// No tunnel benchmark (the micro-benchmarks only).
    pub(crate) no_tunnel: bool,
    /// Also measure a daemon built with the RustCrypto backend.
    pub(crate) tunnel_rustcrypto: bool,
    /// Also run this external tunnel-bench script afterwards.
    pub(crate) tunnel_bench: Option<PathBuf>,
    /// Extra implementations, `LABEL=CMD_TEMPLATE`.
    pub(crate) impls: Vec<String>,
    /// Rounds (default 3, `--quick` 1).
    pub(crate) rounds: Option<u32>,
    /// Seconds per iperf3 test (default 10, `--quick` 4).
    pub(crate) duration: Option<u32>,
    /// Only these labels (comma-separated).
    pub(crate) only: Option<String>,
    /// Only these tests (comma-separated).
    pub(crate) tests: Option<String>,
    /// Peer counts of the idle-RSS test.
    pub(crate) rss_peers: Option<String>,
    /// Initiations in flight at most in the handshake flood.
    pub(crate) hs_window: usize,
    /// iperf3's rate in the paced TCP test, Mbit/s.
    pub(crate) paced_rate: u32,
    /// Record a failing implementation and go on.
    pub(crate) keep_going: bool,
    /// Use the release binaries as they are.
    pub(crate) no_build: bool,
    /// Results folder instead of target/bench/<UTC time>.
    pub(crate) out: Option<PathBuf>,
}

/// Allowance for compiling the benchmarks or the release daemon.
const BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// Allowance for running one benchmark binary once it is built.
const RUN_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How long tunnel-bench gets to clean up after SIGTERM.
const TUNNEL_CLEANUP_GRACE: Duration = Duration::from_secs(30);

/// One micro-benchmark build: a name and the extra cargo flags.
struct Backend {
    name: &'static str,
    features: &'static [&'static str],
}

const BACKENDS: [Backend; 2] = [
    Backend {
        name: "rustcrypto",
        features: &["--no-default-features"],
    },
    Backend {
        name: "ring",
        features: &[],
    },
];

/// Runs the bench subcommand.
pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    let started = Instant::now();
    let root = cmd::workspace_root();
    // Check the tunnel options before minutes of micro-benchmarks.
    let plan = if args.no_tunnel {
        None
    } else {
        Some(TunnelPlan::from_args(args)?)
    };
    if plan.is_some() && !cmd::is_root() {
        bail!(
            "the tunnel benchmark must run as root (network namespaces, TUN devices): run \
             `sudo -E cargo xtask bench`, or `cargo xtask bench --no-tunnel` for the \
             micro-benchmarks only"
        );
    }
    if args.micro || args.no_tunnel {
        micro(&root, args.quick)?;
    }
    if let Some(plan) = plan {
        tunnel(&root, args, &plan)?;
    }
    println!("bench: done in {} s", started.elapsed().as_secs());
    Ok(())
}

/// The router micro-benchmarks with both AEAD backends, and the summary.
fn micro(root: &Path, quick: bool) -> Result<()> {
    // divan options: the attributes in the bench files ask for 30 samples and at most
    // 2 s per benchmark; --quick cuts that down further.
    let divan_args: &[&str] = if quick {
        &["--sample-count", "10", "--max-time", "0.5"]
    } else {
        &[]
    };
    let mut aead = Vec::new();
    for backend in &BACKENDS {
        let out = micro_bench(root, "aead", backend, divan_args)?;
        aead.push((backend.name, parse_divan(&out)));
    }
    let lookups = micro_bench(root, "allowed_ips", &BACKENDS[0], divan_args)?;
    print_micro_summary(&aead, &parse_divan(&lookups));
    Ok(())
}

/// Builds and runs one router benchmark; echoes and returns divan's output.
fn micro_bench(root: &Path, bench: &str, backend: &Backend, divan_args: &[&str]) -> Result<String> {
    let cargo = cmd::cargo();
    let mut base = vec!["bench", "-p", "wg-router", "--bench", bench];
    base.extend_from_slice(backend.features);
    println!(
        "==> bench: cargo {} -- {} ({} backend)",
        base.join(" "),
        divan_args.join(" "),
        backend.name
    );
    // Build with the terminal attached (it may take minutes), then run captured.
    let mut build = cmd::command(&cargo, &base);
    build.arg("--no-run").current_dir(root);
    let status = cmd::status_inherit(&mut build, BUILD_TIMEOUT)?;
    if !status.success() {
        bail!(
            "building the {bench} benchmark ({} backend) failed ({status})",
            backend.name
        );
    }
    let mut c = cmd::command(&cargo, &base);
    c.arg("--").args(divan_args).current_dir(root);
    let out = cmd::output(&mut c, RUN_TIMEOUT)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    std::io::stdout().flush().ok();
    cmd::ensure_success(&c, &out)?;
    Ok(text)
}

/// One row of divan's table: `group/name` and its median time, and median throughput
/// when the benchmark has a counter.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    name: String,
    median_ns: f64,
    /// Bytes/s or items/s.
    median_rate: Option<f64>,
}

/// Reads divan's tree table. Each benchmark is a line `name fastest │ slowest │ median │
/// mean │ samples │ iters`, optionally followed by a throughput line with an empty
/// samples column; lines with an empty median are group headings. Unknown lines are
/// ignored, so a format change only empties the summary.
fn parse_divan(text: &str) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut group = String::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('│').collect();
        let Some(first) = cells.len().checked_sub(6).and_then(|i| cells.get(i)) else {
            continue;
        };
        let n = cells.len();
        let median = cells[n - 4].trim();
        let samples = cells[n - 2].trim();
        // Depth: where the tree branch starts (0 for top-level benchmarks).
        let depth = line
            .chars()
            .position(|c| c == '├' || c == '╰')
            .unwrap_or(usize::MAX);
        let label = first.trim_start_matches(['│', '├', '╰', '─', ' ']);
        let name = label.split_whitespace().next().unwrap_or("");
        if median.is_empty() {
            if !name.is_empty() && depth == 0 {
                group = name.to_owned();
            }
            continue;
        }
        if samples.is_empty() {
            // Throughput line of the previous row.
            if let (Some(last), Some(rate)) = (rows.last_mut(), parse_rate(median)) {
                last.median_rate = Some(rate);
            }
            continue;
        }
        let Some(median_ns) = parse_time_ns(median) else {
            continue;
        };
        let full = if depth == 0 || group.is_empty() {
            name.to_owned()
        } else {
            format!("{group}/{name}")
        };
        rows.push(Row {
            name: full,
            median_ns,
            median_rate: None,
        });
    }
    rows
}

/// `"421.9 µs"` → 421900.
fn parse_time_ns(cell: &str) -> Option<f64> {
    let (value, unit) = cell.split_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let scale = match unit.trim() {
        "ps" => 1e-3,
        "ns" => 1.0,
        "µs" | "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    Some(value * scale)
}

/// `"1.262 GB/s"` → 1.262e9, `"262.5 Mitem/s"` → 2.625e8 (decimal prefixes, as divan
/// prints by default).
fn parse_rate(cell: &str) -> Option<f64> {
    let (value, unit) = cell.split_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let unit = unit.trim().strip_suffix("/s")?;
    let unit = unit
        .strip_suffix("item")
        .or_else(|| unit.strip_suffix('B'))?;
    let scale = match unit {
        "" => 1.0,
        "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        _ => return None,
    };
    Some(value * scale)
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// The two backends side by side, then the allowed-IPs lookups per address.
fn print_micro_summary(aead: &[(&str, Vec<Row>)], lookups: &[Row]) {
    let [(a_name, a_rows), (b_name, b_rows)] = aead else {
        return;
    };
    println!();
    println!("router micro-benchmarks, medians, one thread (MB/s of inner packet bytes):");
    if a_rows.is_empty() {
        println!("  (could not read divan's output; see the tables above)");
    } else {
        println!(
            "  {:<16} {:>11} {:>9}   {:>11} {:>9}   ring speed-up",
            "benchmark", a_name, "MB/s", b_name, "MB/s"
        );
        for a in a_rows {
            let b = b_rows.iter().find(|b| b.name == a.name);
            let mbps = |r: &Row| {
                r.median_rate
                    .map_or_else(|| "-".to_owned(), |x| format!("{:.0}", x / 1e6))
            };
            let (b_time, b_mbps, speedup) = match b {
                Some(b) => (
                    fmt_ns(b.median_ns),
                    mbps(b),
                    format!("x{:.2}", a.median_ns / b.median_ns),
                ),
                None => ("-".to_owned(), "-".to_owned(), String::new()),
            };
            println!(
                "  {:<16} {:>11} {:>9}   {:>11} {:>9}   {}",
                a.name,
                fmt_ns(a.median_ns),
                mbps(a),
                b_time,
                b_mbps,
                speedup
            );
        }
        println!("  (inbound times are per burst of 256 packets; MB/s is comparable across rows)");
    }
    if !lookups.is_empty() {
        println!("allowed-IPs lookups, 10,000 peers, median:");
        for r in lookups {
            match r.median_rate {
                Some(rate) if rate > 0.0 => {
                    println!("  {:<22} {:>6.1} ns/lookup", r.name, 1e9 / rate);
                }
                _ => println!("  {:<22} {}", r.name, fmt_ns(r.median_ns)),
            }
        }
    }
    println!();
}

/// The target directory cargo uses for this workspace.
fn target_dir(root: &Path) -> Result<PathBuf> {
    let mut c = cmd::command(
        &cmd::cargo(),
        &["metadata", "--format-version", "1", "--no-deps"],
    );
    c.current_dir(root);
    let meta = cmd::checked(&mut c, Duration::from_secs(120))?;
    let meta: serde_json::Value =
        serde_json::from_str(&meta).context("`cargo metadata` printed invalid JSON")?;
    Ok(meta["target_directory"]
        .as_str()
        .map_or_else(|| root.join("target"), PathBuf::from))
}

/// Builds the three daemon binaries in release mode; with `rustcrypto` (the pure-Rust
/// AEAD instead of the default ring), into its own target directory so the ordinary
/// `target/release` binaries are left alone. Returns the path of `wireguard-rs` (the
/// workers sit beside it).
fn build_daemon(root: &Path, target: &Path, rustcrypto: bool) -> Result<PathBuf> {
    let mut args = vec![
        "build",
        "--release",
        "-p",
        "wireguard-rs",
        "-p",
        "wireguard-rs-keyd",
        "-p",
        "wireguard-rs-datad",
    ];
    if rustcrypto {
        args.push("--no-default-features");
    } else {
        // The library tunnel's benchmark binary (implementation `wg-tunnel`).
        args.extend(["-p", "wg-tunnel", "--bins", "--example", "tunnel"]);
    }
    let dir = if rustcrypto {
        target.join("bench-rustcrypto")
    } else {
        target.to_path_buf()
    };
    println!(
        "==> bench: {}cargo {}",
        if rustcrypto {
            format!("CARGO_TARGET_DIR={} ", dir.display())
        } else {
            String::new()
        },
        args.join(" ")
    );
    let mut c = cmd::command(&cmd::cargo(), &args);
    c.current_dir(root);
    if rustcrypto {
        c.env("CARGO_TARGET_DIR", &dir);
    }
    let status = cmd::status_inherit(&mut c, BUILD_TIMEOUT)?;
    if !status.success() {
        bail!("building the release daemon failed ({status})");
    }
    Ok(dir.join("release").join("wireguard-rs"))
}

/// The tunnel options, checked before anything is built.
struct TunnelPlan {
    rounds: u32,
    duration: u32,
    tests: netbench::Tests,
    rss_peers: Vec<u32>,
    hs_window: usize,
    paced_rate: u32,
    extra: Vec<impls::Impl>,
    only: Option<Vec<String>>,
}

impl TunnelPlan {
    fn from_args(args: &BenchArgs) -> Result<Self> {
        let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 });
        let duration = args.duration.unwrap_or(if args.quick { 4 } else { 10 });
        if !(1..=50).contains(&rounds) {
            bail!("--rounds must be between 1 and 50 (got {rounds})");
        }
        if !(1..=600).contains(&duration) {
            bail!("--duration must be between 1 and 600 s (got {duration})");
        }
        let tests = match &args.tests {
            Some(t) => netbench::Tests::parse(t)?,
            None => netbench::Tests::ALL,
        };
        let rss_peers = match &args.rss_peers {
            Some(list) => parse_counts(list)?,
            None => vec![0, 1000, 10_000],
        };
        if !(1..=4096).contains(&args.hs_window) {
            bail!(
                "--hs-window must be between 1 and 4096 (got {})",
                args.hs_window
            );
        }
        if !(1..=100_000).contains(&args.paced_rate) {
            bail!(
                "--paced-rate must be between 1 and 100000 Mbit/s (got {})",
                args.paced_rate
            );
        }
        let extra = args
            .impls
            .iter()
            .map(|a| impls::parse_impl_arg(a))
            .collect::<Result<Vec<_>>>()?;
        let only = args.only.as_ref().map(|o| {
            o.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        });
        Ok(Self {
            rounds,
            duration,
            tests,
            rss_peers,
            hs_window: args.hs_window,
            paced_rate: args.paced_rate,
            extra,
            only,
        })
    }
}

/// `0,1000,10000` → counts (each at most 100,000).
fn parse_counts(list: &str) -> Result<Vec<u32>> {
    let v = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.replace('_', "")
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= 100_000)
                .with_context(|| format!("--rss-peers: {s:?} is not a peer count (0..=100000)"))
        })
        .collect::<Result<Vec<_>>>()?;
    if v.is_empty() {
        bail!("--rss-peers names no peer count");
    }
    Ok(v)
}

/// The implementations in column order: ours (and the RustCrypto build), wireguard-go and
/// boringtun when installed, `--impl` ones, plain veth; then `--only`.
fn implementations(
    ours: &Path,
    rustcrypto: Option<&Path>,
    plan: &TunnelPlan,
) -> Result<Vec<impls::Impl>> {
    use impls::{Impl, Kind};
    let daemon = |label: &str, template: String| Impl {
        label: label.to_owned(),
        kind: Kind::Daemon(template),
    };
    let ours_t = format!("{} -f {{if}}", impls::quote(&ours.to_string_lossy()));
    let mut list = vec![daemon(impls::OURS, ours_t)];
    if let Some(rc) = rustcrypto {
        list.push(daemon(
            "wireguard-rs-rustcrypto",
            format!("{} -f {{if}}", impls::quote(&rc.to_string_lossy())),
        ));
    }
    let wanted = |l: &str| plan.only.as_ref().is_none_or(|o| o.iter().any(|x| x == l));
    match cmd::find_on_path("wireguard-go") {
        Some(p) => list.push(daemon(
            "wireguard-go",
            format!("{} -f {{if}}", impls::quote(&p.to_string_lossy())),
        )),
        None if wanted("wireguard-go") => {
            println!(
                "bench: wireguard-go is not installed (`cargo xtask setup`): measured without it"
            );
        }
        None => {}
    }
    match impls::find_boringtun() {
        Some(p) => list.push(daemon(
            "boringtun",
            format!(
                "{} --foreground --disable-drop-privileges {{if}}",
                impls::quote(&p.to_string_lossy())
            ),
        )),
        None if wanted("boringtun") => {
            println!(
                "bench: boringtun-cli is not installed (`cargo xtask setup`): measured without it"
            );
        }
        None => {}
    }
    // The library tunnel (`wg-tunnel`) in its benchmark binary, which serves the UAPI
    // socket as a daemon does: built beside ours unless `--no-build` found none.
    let tunnel_example = ours.with_file_name("examples").join("tunnel");
    if tunnel_example.is_file() {
        list.push(daemon(
            "wg-tunnel",
            format!("{} {{if}}", impls::quote(&tunnel_example.to_string_lossy())),
        ));
    } else if wanted("wg-tunnel") {
        println!(
            "bench: {} is missing (`cargo build --release -p wg-tunnel --example tunnel`): measured without wg-tunnel",
            tunnel_example.display()
        );
    }
    for e in &plan.extra {
        let mut e = e.clone();
        if let Kind::Daemon(t) = &e.kind {
            e.kind = Kind::Daemon(t.replace("{bin}", &impls::quote(&ours.to_string_lossy())));
        }
        if list.iter().any(|i| i.label == e.label) || e.label == impls::PLAIN {
            bail!("--impl label {:?} is already taken", e.label);
        }
        list.push(e);
    }
    list.push(Impl {
        label: impls::PLAIN.to_owned(),
        kind: Kind::Plain,
    });
    if let Some(only) = &plan.only {
        for l in only {
            if !list.iter().any(|i| &i.label == l) {
                let known: Vec<&str> = list.iter().map(|i| i.label.as_str()).collect();
                bail!(
                    "--only {l:?}: no such implementation here (known: {})",
                    known.join(", ")
                );
            }
        }
        list.retain(|i| only.contains(&i.label));
    }
    Ok(list)
}

/// The xtask binary for the handshake flood: a release build (a debug build spends more
/// time per message than the responder does). Built here unless `no_build`; falls back
/// to this binary with a warning.
fn flood_binary(root: &Path, target: &Path, no_build: bool) -> Result<PathBuf> {
    let me = std::env::current_exe().context("could not find the running xtask binary")?;
    let release = target.join("release").join("xtask");
    if me.parent().and_then(Path::file_name) == Some(std::ffi::OsStr::new("release")) {
        return Ok(me);
    }
    if !no_build {
        println!("==> bench: cargo build --release -p xtask (the handshake flood's initiators)");
        let mut c = cmd::command(&cmd::cargo(), &["build", "--release", "-p", "xtask"]);
        c.current_dir(root);
        let status = cmd::status_inherit(&mut c, BUILD_TIMEOUT)?;
        if !status.success() {
            println!("bench: WARNING: building xtask in release mode failed ({status})");
        }
    }
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    if release.is_file() && modified(&release) >= modified(&me) {
        return Ok(release);
    }
    println!(
        "bench: WARNING: no up-to-date release build of xtask: the handshake flood runs from \
         this debug build and may be slower than the responder"
    );
    Ok(me)
}

/// The first line a `--version`-like command prints, if it works.
fn version_of(program: &str, args: &[&str]) -> Option<String> {
    let mut c = cmd::command(program, args);
    let out = cmd::output(&mut c, Duration::from_secs(10)).ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

/// `wireguard-rs 0.1.0` → `0.1.0` for the key `wireguard-rs`.
fn strip_name(key: &str, version: String) -> String {
    match version.strip_prefix(key).and_then(|r| r.strip_prefix(' ')) {
        Some(rest) => rest.to_owned(),
        None => version,
    }
}

/// Versions of what is measured and measures, for the report.
fn versions(root: &Path, ours: &Path, list: &[impls::Impl]) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let mut git = cmd::command("git", &["describe", "--always", "--dirty"]);
    git.current_dir(root);
    let rev = cmd::checked(&mut git, Duration::from_secs(10)).map(|s| s.trim().to_owned());
    if let Some(ver) = version_of(&ours.to_string_lossy(), &["--version"]) {
        let rev = rev.map(|r| format!(" (git {r})")).unwrap_or_default();
        v.push((
            impls::OURS.to_owned(),
            format!("{}{rev}", strip_name("wireguard-rs", ver)),
        ));
    }
    if let Some(dir) = ours.parent() {
        let mut c = cmd::command(
            "sha256sum",
            &["wireguard-rs", "wireguard-rs-keyd", "wireguard-rs-datad"],
        );
        c.current_dir(dir);
        if let Ok(out) = cmd::checked(&mut c, Duration::from_secs(30)) {
            let short: Vec<String> = out
                .lines()
                .filter_map(|l| {
                    let (hash, name) = l.split_once(char::is_whitespace)?;
                    Some(format!(
                        "{} {}",
                        name.trim().trim_start_matches('*'),
                        &hash[..hash.len().min(12)]
                    ))
                })
                .collect();
            v.push(("with sha256".to_owned(), short.join(", ")));
        }
    }
    if list.iter().any(|i| i.label == "wireguard-go") {
        // `wireguard-go --help` would create an interface: ask dpkg instead.
        if let Some(ver) = version_of("dpkg-query", &["-W", "-f=${Version}", "wireguard-go"]) {
            v.push(("wireguard-go".to_owned(), ver));
        }
    }
    if list.iter().any(|i| i.label == "boringtun")
        && let Some(p) = impls::find_boringtun()
        && let Some(ver) = version_of(&p.to_string_lossy(), &["--version"])
    {
        v.push(("boringtun".to_owned(), strip_name("boringtun", ver)));
    }
    if let Some(ver) = version_of("iperf3", &["--version"]) {
        v.push(("iperf3".to_owned(), ver));
    }
    v
}

/// The tunnel part: build, our harness, then optionally the external tunnel-bench.
fn tunnel(root: &Path, args: &BenchArgs, plan: &TunnelPlan) -> Result<()> {
    let target = target_dir(root)?;
    let ours = if args.no_build {
        let bin = target.join("release").join("wireguard-rs");
        for name in ["wireguard-rs", "wireguard-rs-keyd", "wireguard-rs-datad"] {
            let p = target.join("release").join(name);
            if !p.is_file() {
                bail!("--no-build: {} does not exist; build it first", p.display());
            }
        }
        println!(
            "bench: --no-build: using the release binaries in {}",
            target.join("release").display()
        );
        bin
    } else {
        build_daemon(root, &target, false)?
    };
    let rustcrypto = if args.tunnel_rustcrypto {
        Some(build_daemon(root, &target, true)?)
    } else {
        None
    };
    let flood_exe = flood_binary(root, &target, args.no_build || !plan.tests.hs)?;
    let stamp = netbench::utc_stamp(netbench::unix_now());
    let out_dir = match &args.out {
        Some(p) => {
            fs::create_dir_all(p).with_context(|| format!("could not create {}", p.display()))?;
            p.clone()
        }
        None => netbench::create_out_dir(&target.join("bench"), &stamp)?,
    };
    // Run copies: a concurrent `cargo build --release` must not swap binaries mid-run.
    // They are removed afterwards (their sha256 is in the report).
    let _copies = cmd::RemoveOnDrop(vec![out_dir.join("bin"), out_dir.join("bin-rustcrypto")]);
    let ours = snapshot(&ours, &out_dir.join("bin"))?;
    let rustcrypto = match rustcrypto {
        Some(rc) => Some(snapshot(&rc, &out_dir.join("bin-rustcrypto"))?),
        None => None,
    };
    let flood_exe = snapshot_one(&flood_exe, &out_dir.join("bin"))?;
    let list = implementations(&ours, rustcrypto.as_deref(), plan)?;
    let mut command_line = String::from("cargo xtask");
    for a in std::env::args().skip(1) {
        command_line.push(' ');
        command_line.push_str(&impls::quote(&a));
    }
    let opts = netbench::Options {
        versions: versions(root, &ours, &list),
        impls: list,
        rounds: plan.rounds,
        duration: plan.duration,
        tests: plan.tests,
        rss_peers: plan.rss_peers.clone(),
        keep_going: args.keep_going,
        out_dir,
        command_line,
        flood_exe,
        hs_window: plan.hs_window,
        paced_rate: plan.paced_rate,
    };
    // Measured: a daemon takes about 4 x duration + 20 s per round (start, pings, the
    // single-daemon tests), plain veth 4 x duration + 5 s.
    let per_round: u64 = opts
        .impls
        .iter()
        .map(|i| {
            u64::from(opts.duration) * 4
                + match i.kind {
                    impls::Kind::Plain => 5,
                    impls::Kind::Daemon(_) => 20,
                }
        })
        .sum();
    println!(
        "bench: measuring {} over {} round(s), about {} min",
        opts.impls
            .iter()
            .map(|i| i.label.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        opts.rounds,
        (per_round * u64::from(opts.rounds)).div_ceil(60)
    );
    netbench::run(&opts)?;

    if let Some(script) = &args.tunnel_bench {
        external_tunnel_bench(
            script,
            &ours,
            rustcrypto.as_deref(),
            args.quick,
            &opts.out_dir,
        )?;
    }
    Ok(())
}

/// Copies `wireguard-rs` and the workers beside it into `dir`; returns the copy of
/// `wireguard-rs` (it finds the workers beside itself).
fn snapshot(ours: &Path, dir: &Path) -> Result<PathBuf> {
    let from = ours.parent().context("the daemon path has no directory")?;
    let mut main = None;
    for name in ["wireguard-rs", "wireguard-rs-keyd", "wireguard-rs-datad"] {
        let copy = snapshot_one(&from.join(name), dir)?;
        if name == "wireguard-rs" {
            main = Some(copy);
        }
    }
    // The library tunnel's benchmark binary, when it was built (not for RustCrypto).
    let tunnel = from.join("examples").join("tunnel");
    if tunnel.is_file() {
        snapshot_one(&tunnel, &dir.join("examples"))?;
    }
    main.context("no wireguard-rs binary")
}

/// Copies one executable into `dir` (created), keeping its mode.
fn snapshot_one(file: &Path, dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let name = file
        .file_name()
        .context("a binary path without a file name")?;
    let to = dir.join(name);
    fs::copy(file, &to)
        .with_context(|| format!("could not copy {} to {}", file.display(), to.display()))?;
    Ok(to)
}

/// Runs the external tunnel-bench script on our binaries (it adds wireguard-go and
/// boringtun itself), echoing its output and logging it into `out_dir`.
fn external_tunnel_bench(
    script: &Path,
    ours: &Path,
    rustcrypto: Option<&Path>,
    quick: bool,
    out_dir: &Path,
) -> Result<()> {
    if !script.is_file() {
        bail!("tunnel-bench {} does not exist", script.display());
    }
    let (repeat, duration, tests, wait_quiet) = if quick {
        (1u64, 5u64, "ping,tcp1", 0u64)
    } else {
        (3, 10, "ping,tcp1,tcp4", 20)
    };
    let json = out_dir.join("tunnel-bench.json");
    let log = out_dir.join("tunnel-bench.log");
    let mut c = cmd::command(&script.to_string_lossy(), &[] as &[&str]);
    let template = |bin: &Path| format!("{} -f {{if}}", bin.display());
    c.arg("--impl")
        .arg(template(ours))
        .args(["--label", "wireguard-rs"]);
    if let Some(rustcrypto) = rustcrypto {
        c.arg("--impl")
            .arg(template(rustcrypto))
            .args(["--label", "wireguard-rs-rustcrypto"]);
    }
    c.args(["--tests", tests])
        .arg("--repeat")
        .arg(repeat.to_string())
        .arg("--duration")
        .arg(duration.to_string())
        .arg("--wait-quiet")
        .arg(wait_quiet.to_string())
        .arg("--json")
        .arg(&json);
    // Up to four configurations; per trial: the quiet wait, start-up and handshake, 3 s
    // of ping, each iperf3 test plus its pauses.
    let iperf_tests =
        u64::try_from(tests.split(',').filter(|t| t.starts_with("tcp")).count()).unwrap_or(2);
    let per_trial = wait_quiet + 20 + iperf_tests * (duration + 5);
    let budget = Duration::from_secs(4 * repeat * per_trial + 120);
    println!(
        "==> bench: {} (at most {} min; raw data in {})",
        cmd::describe(&c),
        budget.as_secs().div_ceil(60),
        json.display()
    );
    match run_streaming(&mut c, &log, budget)? {
        Some(0) => {
            println!(
                "bench: tunnel-bench ratios are relative to its first column; its CPU and RSS \
                 rows see only the process it started (our monitor), not keyd or datad"
            );
            Ok(())
        }
        Some(1) => bail!(
            "tunnel-bench: a trial failed (see its output above and {})",
            log.display()
        ),
        Some(2) => bail!(
            "tunnel-bench: usage or setup error (a missing tool, or another run holds \
             /run/tunnel-bench.lock); see its output above"
        ),
        Some(3) => bail!("tunnel-bench: the tunnel never came up (see the daemon logs above)"),
        Some(130) => bail!("tunnel-bench was interrupted"),
        other => bail!("tunnel-bench exited abnormally ({other:?})"),
    }
}

/// Runs `c` in its own process group with its output going to `log`, echoing the log as
/// it grows. On Ctrl-C or after `budget` the group gets SIGTERM (tunnel-bench then deletes
/// its namespaces) and, after a grace period, SIGKILL. Returns the exit code.
fn run_streaming(
    c: &mut std::process::Command,
    log: &Path,
    budget: Duration,
) -> Result<Option<i32>> {
    let mut child = Background::spawn("tunnel-bench", c, Some(log))?;
    let mut reader =
        fs::File::open(log).with_context(|| format!("could not read {}", log.display()))?;
    let deadline = Instant::now() + budget;
    loop {
        echo(&mut reader);
        if let Some(status) = child.poll_exit()? {
            echo(&mut reader);
            return Ok(status.code());
        }
        if cmd::interrupted() {
            child.stop(TUNNEL_CLEANUP_GRACE);
            echo(&mut reader);
            bail!("interrupted; tunnel-bench was stopped");
        }
        if Instant::now() >= deadline {
            child.stop(TUNNEL_CLEANUP_GRACE);
            echo(&mut reader);
            bail!(
                "tunnel-bench did not finish within {} s and was stopped",
                budget.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Copies what was appended to the log since the last call to our stdout.
fn echo(reader: &mut fs::File) {
    let mut buf = Vec::new();
    if reader.read_to_end(&mut buf).is_ok() && !buf.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&buf);
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIVAN: &str = "\
Timer precision: 20 ns
aead         fastest       │ slowest       │ median        │ mean          │ samples │ iters
├─ inbound                 │               │               │               │         │
│  ├─ 64     415 µs        │ 6.432 ms      │ 421.9 µs      │ 919.7 µs      │ 30      │ 30
│  │         39.47 MB/s    │ 2.546 MB/s    │ 38.82 MB/s    │ 17.81 MB/s    │         │
│  ╰─ 8192   1.661 ms      │ 8.587 ms      │ 2.349 ms      │ 3.119 ms      │ 30      │ 30
│            1.262 GB/s    │ 244.2 MB/s    │ 892.6 MB/s    │ 672.2 MB/s    │         │
╰─ open                    │               │               │               │         │
   ╰─ 64     174.9 ns      │ 182.5 ns      │ 179.9 ns      │ 179.7 ns      │ 30      │ 480
             365.7 MB/s    │ 350.6 MB/s    │ 355.5 MB/s    │ 355.9 MB/s    │         │
";

    const LOOKUPS: &str = "\
allowed_ips              fastest       │ slowest       │ median        │ mean          │ samples │ iters
├─ v4_host_routes        15.58 µs      │ 86.34 µs      │ 15.6 µs       │ 19.57 µs      │ 30      │ 30
│                        262.8 Mitem/s │ 47.43 Mitem/s │ 262.5 Mitem/s │ 209.2 Mitem/s │         │
╰─ v6_every_length_miss  1.762 ms      │ 5.849 ms      │ 1.791 ms      │ 2.249 ms      │ 30      │ 30
                         2.324 Mitem/s │ 700.2 Kitem/s │ 2.286 Mitem/s │ 1.82 Mitem/s  │         │
";

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() <= b * 1e-9)
    }

    #[test]
    fn reads_grouped_rows() {
        let rows = parse_divan(DIVAN);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["inbound/64", "inbound/8192", "open/64"]);
        assert!(close(Some(rows[0].median_ns), 421_900.0));
        assert!(close(rows[0].median_rate, 38.82e6));
        assert!(close(Some(rows[1].median_ns), 2_349_000.0));
        assert!(close(rows[2].median_rate, 355.5e6));
    }

    #[test]
    fn reads_top_level_rows() {
        let rows = parse_divan(LOOKUPS);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "v4_host_routes");
        assert!(close(rows[0].median_rate, 262.5e6));
        assert_eq!(rows[1].name, "v6_every_length_miss");
        assert!(close(Some(rows[1].median_ns), 1_791_000.0));
    }

    #[test]
    fn ignores_other_text() {
        assert!(parse_divan("Compiling x\nFinished\n").is_empty());
        assert!(close(parse_rate("12 KB/s"), 12e3));
        assert!(close(parse_time_ns("3 s"), 3e9));
        assert_eq!(parse_time_ns("n/a"), None);
    }
}
