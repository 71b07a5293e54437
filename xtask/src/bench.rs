//! `cargo xtask bench`: the router micro-benchmarks with both AEAD backends, then the
//! side-by-side tunnel benchmark (`tunnel-bench`) of our release daemon against
//! wireguard-go and boringtun. `docs/benchmarks.md` explains the figures.
//!
//! 1. `cargo bench -p wg-router --bench aead` with the default backend (RustCrypto) and
//!    with `--no-default-features` (RustCrypto; ring is the default), then
//!    `--bench allowed_ips`; a summary table puts the two
//!    backends' medians side by side.
//! 2. As root, and if `tunnel-bench` is found (`--tunnel-bench`, `$WG_TUNNEL_BENCH`,
//!    `../shared/bench/tunnel-bench` beside the workspace, or `tunnel-bench` on PATH):
//!    builds the release daemon (and, with `--tunnel-rustcrypto`, a second one with
//!    the RustCrypto AEAD in `target/bench-rustcrypto`) and runs tunnel-bench, which adds
//!    wireguard-go and boringtun itself when they are installed and prints the ratios.
//!    Not root, or no tunnel-bench: the tunnel part is skipped with a message.
//!
//! Everything is bounded: each cargo command and the tunnel run have a deadline, and
//! Ctrl-C stops tunnel-bench with SIGTERM so that it removes its namespaces.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, Background};

/// Arguments of `cargo xtask bench`.
pub(crate) struct BenchArgs {
    /// Fewer samples and a short tunnel run (one round, 5 s tests, no 4-stream test).
    pub(crate) quick: bool,
    /// Only the micro-benchmarks.
    pub(crate) no_tunnel: bool,
    /// Also measure a daemon built with the RustCrypto backend in the tunnel run.
    pub(crate) tunnel_rustcrypto: bool,
    /// Where tunnel-bench is, if not found automatically.
    pub(crate) tunnel_bench: Option<PathBuf>,
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
    // divan options: the attributes in the bench files ask for 30 samples and at most
    // 2 s per benchmark; --quick cuts that down further.
    let divan_args: &[&str] = if args.quick {
        &["--sample-count", "10", "--max-time", "0.5"]
    } else {
        &[]
    };

    let mut aead = Vec::new();
    for backend in &BACKENDS {
        let out = micro_bench(&root, "aead", backend, divan_args)?;
        aead.push((backend.name, parse_divan(&out)));
    }
    let lookups = micro_bench(&root, "allowed_ips", &BACKENDS[0], divan_args)?;
    print_micro_summary(&aead, &parse_divan(&lookups));

    if args.no_tunnel {
        println!("bench: tunnel benchmark skipped (--no-tunnel)");
    } else {
        tunnel(&root, args)?;
    }
    println!("bench: done in {} s", started.elapsed().as_secs());
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

/// Finds tunnel-bench: the flag, `$WG_TUNNEL_BENCH`, `../shared/bench/tunnel-bench` next
/// to the workspace, then PATH.
fn find_tunnel_bench(root: &Path, flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("WG_TUNNEL_BENCH") {
        return Some(PathBuf::from(p));
    }
    let beside = root.join("../shared/bench/tunnel-bench");
    if beside.is_file() {
        return Some(fs::canonicalize(&beside).unwrap_or(beside));
    }
    cmd::find_on_path("tunnel-bench")
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

/// The tunnel part: root only, and only if tunnel-bench exists.
fn tunnel(root: &Path, args: &BenchArgs) -> Result<()> {
    if !cmd::is_root() {
        println!(
            "bench: tunnel benchmark SKIPPED: not root (it creates network namespaces and \
             TUN devices); run `sudo -E cargo xtask bench` for it"
        );
        return Ok(());
    }
    let Some(script) = find_tunnel_bench(root, args.tunnel_bench.as_deref()) else {
        println!(
            "bench: tunnel benchmark SKIPPED: tunnel-bench not found (pass --tunnel-bench \
             PATH or set WG_TUNNEL_BENCH)"
        );
        return Ok(());
    };
    if !script.is_file() {
        bail!("tunnel-bench {} does not exist", script.display());
    }
    for (program, probe) in [("wireguard-go", None), ("boringtun-cli", Some("--version"))] {
        // wireguard-go is only looked up: it has no harmless probe flag (`--help` would
        // create an interface named --help).
        let found = cmd::find_on_path(program).is_some_and(|path| match probe {
            None => true,
            Some(flag) => {
                let mut c = cmd::command(&path.to_string_lossy(), &[flag]);
                cmd::output(&mut c, Duration::from_secs(10)).is_ok_and(|o| o.status.success())
            }
        });
        if !found {
            println!("bench: {program} not installed: the tunnel run goes without it");
        }
    }

    let target = target_dir(root)?;
    let ours = build_daemon(root, &target, false)?;
    let rustcrypto = if args.tunnel_rustcrypto {
        Some(build_daemon(root, &target, true)?)
    } else {
        None
    };

    let (repeat, duration, tests, wait_quiet) = if args.quick {
        (1u64, 5u64, "ping,tcp1", 0u64)
    } else {
        (3, 10, "ping,tcp1,tcp4", 20)
    };
    let results = target.join("bench");
    fs::create_dir_all(&results)
        .with_context(|| format!("could not create {}", results.display()))?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let json = results.join(format!("tunnel-{stamp}.json"));
    let log = results.join(format!("tunnel-{stamp}.log"));

    let mut c = cmd::command(&script.to_string_lossy(), &[] as &[&str]);
    let template = |bin: &Path| format!("{} -f {{if}}", bin.display());
    c.arg("--impl")
        .arg(template(&ours))
        .args(["--label", "wireguard-rs"]);
    if let Some(rustcrypto) = &rustcrypto {
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

    // Up to four configurations (wireguard-go, boringtun, ours, ours with ring); per
    // trial: the quiet wait, start-up and handshake, 3 s of ping, each iperf3 test plus
    // its pauses.
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
    let code = run_streaming(&mut c, &log, budget)?;
    match code {
        Some(0) => {
            println!(
                "bench: ratios are relative to the first column (wireguard-go when \
                 installed); throughput varies ±20-30 % on a shared machine (see \
                 docs/benchmarks.md). tunnel-bench counts CPU and RSS of the process it \
                 started only: for wireguard-rs that is the monitor, so its CPU rows read 0 \
                 and its data plane appears as 'unattributed CPU'. Re-print with `{} \
                 --report {}`",
                script.display(),
                json.display()
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
