//! `cargo xtask wine-test`: the workspace's portable tests, built for Windows with MinGW
//! and run under Wine (Debian's `wine64`, `gcc-mingw-w64-x86-64`).
//!
//! Steps: `cargo test --no-run --message-format=json --target x86_64-pc-windows-gnu` for
//! [`CRATES`]; the test executables are read from cargo's JSON; a one-function
//! `bcryptprimitives.dll` is built with MinGW and put beside them (Rust's std imports
//! `ProcessPrng` from it, which Wine 8.0 lacks; ours forwards to `RtlGenRandom`, exported
//! by advapi32 as `SystemFunction036`); each executable runs under Wine in a throwaway
//! `WINEPREFIX` below the target directory, bounded in time; the wineserver it started is
//! stopped (`wineserver -k`) and the prefix removed, also on error. Tests that cannot run
//! there are listed in [`SKIPPED`] with the reason and skipped by name, loudly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// The Rust target the tests are built for.
pub(crate) const TARGET: &str = "x86_64-pc-windows-gnu";

/// The MinGW C compiler (Debian's `gcc-mingw-w64-x86-64`).
const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";

/// The crates whose tests run under Wine: the sans-IO cores, the UAPI text protocol,
/// the IPC messages, keyd's portable cores, the offload (GRO/TSO) logic, the simulation
/// and the platform layer (its Windows backend included). `wg-ipc` is Linux-only and
/// builds empty on Windows: it is listed so that it keeps building there.
pub(crate) const CRATES: [&str; 13] = [
    "wg-wire",
    "wg-handshake",
    "wg-cookie",
    "wg-router",
    "wg-timers",
    "wg-device",
    "wg-messages",
    "wg-uapi",
    "wg-ipc",
    "wg-keyd",
    "wg-offload",
    "wg-sim",
    "wg-platform",
];

/// Tests skipped by name under Wine, each with the reason printed on every run: what
/// Wine lacks, or a long OS-independent test the Linux step already runs.
pub(crate) const SKIPPED: [(&str, &str); 2] = [
    (
        "windows::pipe_server::tests::a_second_server_for_the_same_interface_is_refused",
        "Wine 8.0 ignores FILE_FLAG_FIRST_PIPE_INSTANCE (a second pipe server is not refused)",
    ),
    (
        "a_hundred_peers_for_hours_keep_every_session_fresh_and_leak_nothing",
        "three hours of virtual time with 100 peers: OS-independent logic that the Linux \
         test step runs; under Wine it cost 70 s of CI's time for nothing new",
    ),
];

/// The shim's C source: `ProcessPrng` as bcryptprimitives.dll exports it on Windows 10+,
/// filled by `RtlGenRandom` in chunks (its length is a ULONG).
const SHIM_SOURCE: &str = r#"#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
"#;

const BUILD_TIMEOUT: Duration = Duration::from_secs(45 * 60);
const PREFIX_TIMEOUT: Duration = Duration::from_secs(3 * 60);

/// Options of `cargo xtask wine-test`.
pub(crate) struct WineTestArgs {
    /// Only these crates (default [`CRATES`]).
    pub(crate) crates: Vec<String>,
    /// Time allowed to each test executable.
    pub(crate) timeout_secs: u64,
}

/// One test executable from cargo's JSON.
struct TestBinary {
    package: String,
    name: String,
    path: PathBuf,
    manifest_dir: PathBuf,
}

/// libtest's counts from its "test result:" line.
#[derive(Default, Clone, Copy)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs the whole task.
pub(crate) fn run(args: &WineTestArgs) -> Result<()> {
    let started = Instant::now();
    let root = cmd::workspace_root();
    let wine = find_wine()
        .context("Wine is not installed: install Debian's wine64 (as root: `cargo xtask setup`)")?;
    let wineserver = find_wineserver().context(
        "wineserver is not installed: install Debian's wine64 (as root: `cargo xtask setup`)",
    )?;
    cmd::require_tools(&[MINGW_GCC])?;
    require_rust_target()?;
    let target_dir = target_dir(&root);
    let work = target_dir.join("wine-test");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let crates: Vec<String> = if args.crates.is_empty() {
        CRATES.iter().map(|c| (*c).to_owned()).collect()
    } else {
        args.crates.clone()
    };
    println!(
        "wine-test: building the tests of {} for {TARGET}",
        crates.join(" ")
    );
    let binaries = build_tests(&root, &crates)?;
    if binaries.is_empty() {
        bail!("cargo built no test executable for {}", crates.join(" "));
    }

    let shim = build_shim(&work)?;
    for dir in binaries
        .iter()
        .filter_map(|b| b.path.parent())
        .collect::<std::collections::BTreeSet<_>>()
    {
        std::fs::copy(&shim, dir.join("bcryptprimitives.dll"))
            .with_context(|| format!("copying the shim into {}", dir.display()))?;
    }

    let prefix = work.join("prefix");
    if prefix.exists() {
        std::fs::remove_dir_all(&prefix)
            .with_context(|| format!("removing the old prefix {}", prefix.display()))?;
    }
    let _server = WineServerGuard {
        wineserver: wineserver.clone(),
        prefix: prefix.clone(),
    };
    init_prefix(&wine, &wineserver, &prefix)?;

    for (name, why) in SKIPPED {
        println!("wine-test: SKIPPED under Wine: {name}: {why}");
    }
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut totals = Counts::default();
    let mut failures: Vec<String> = Vec::new();
    for binary in &binaries {
        let label = format!("{} ({})", binary.package, binary.name);
        let t0 = Instant::now();
        let run_once = || {
            let mut c = wine_command(&wine, &prefix);
            c.arg(&binary.path);
            for (name, _) in SKIPPED {
                c.args(["--skip", name]);
            }
            c.current_dir(&binary.manifest_dir);
            cmd::output(&mut c, timeout)
        };
        let mut outcome = run_once();
        if let Ok(out) = &outcome
            && !out.status.success()
            && wine_itself_failed(
                &String::from_utf8_lossy(&out.stdout),
                &String::from_utf8_lossy(&out.stderr),
            )
        {
            println!(
                "wine-test: {label}: Wine itself failed before any test ran (\"wine client \
                 error\", no libtest summary): running it ONCE MORE"
            );
            print_tail(&String::from_utf8_lossy(&out.stderr), 5);
            outcome = run_once();
        }
        let secs = t0.elapsed().as_secs_f64();
        match outcome {
            Err(e) => {
                println!("wine-test: {label}: FAILED to run: {e:#}");
                failures.push(label);
            }
            Ok(out) => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                let counts = parse_counts(&stdout);
                totals.passed += counts.passed;
                totals.failed += counts.failed;
                totals.ignored += counts.ignored;
                if out.status.success() {
                    println!(
                        "wine-test: {label}: ok, {} passed, {} ignored ({secs:.1} s)",
                        counts.passed, counts.ignored
                    );
                } else {
                    println!(
                        "wine-test: {label}: FAILED ({}), {} passed, {} failed ({secs:.1} s)",
                        out.status, counts.passed, counts.failed
                    );
                    print_tail(&stdout, 60);
                    print_tail(&String::from_utf8_lossy(&out.stderr), 20);
                    failures.push(label);
                }
            }
        }
    }
    println!(
        "wine-test: {} executables, {} tests passed, {} failed, {} ignored, {} skipped by name, in {:.0} s",
        binaries.len(),
        totals.passed,
        totals.failed,
        totals.ignored,
        SKIPPED.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        bail!(
            "tests failed under Wine in: {}; their output is above",
            failures.join(", ")
        );
    }
    Ok(())
}

/// Wine's 64-bit loader: Debian's path, else `wine64` or `wine` on PATH.
fn find_wine() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/lib/wine/wine64");
    if debian.is_file() {
        return Some(debian);
    }
    cmd::find_on_path("wine64").or_else(|| cmd::find_on_path("wine"))
}

fn find_wineserver() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/lib/wine/wineserver64");
    if debian.is_file() {
        return Some(debian);
    }
    cmd::find_on_path("wineserver")
}

fn require_rust_target() -> Result<()> {
    if !cmd::on_path("rustup") {
        return Ok(()); // Another toolchain manager: cargo will say if the target is missing.
    }
    let mut c = cmd::command::<&str>("rustup", &["target", "list", "--installed"]);
    let out = cmd::output(&mut c, Duration::from_secs(60))?;
    if !String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        bail!(
            "the Rust target {TARGET} is missing: run `rustup target add {TARGET}` (or `cargo xtask setup`)"
        );
    }
    Ok(())
}

/// `CARGO_TARGET_DIR` if set (relative to the workspace), else `target/`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Builds the tests and returns the executables cargo reports.
fn build_tests(root: &Path, crates: &[String]) -> Result<Vec<TestBinary>> {
    let mut args: Vec<&str> = vec![
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
        "--target",
        TARGET,
    ];
    for c in crates {
        args.extend(["-p", c.as_str()]);
    }
    let mut c = cmd::command(&cmd::cargo(), &args);
    c.current_dir(root);
    let out = cmd::output(&mut c, BUILD_TIMEOUT)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        print_tail(&stderr, 40);
        let hint = if stderr.contains("NASM") {
            " (aws-lc-sys needs nasm for Windows: `apt-get install nasm` or `cargo xtask setup`)"
        } else {
            ""
        };
        bail!("building the tests for {TARGET} failed{hint}; cargo's messages are above");
    }
    parse_artifacts(&String::from_utf8_lossy(&out.stdout))
}

/// The test executables in cargo's `--message-format=json` output.
fn parse_artifacts(json_lines: &str) -> Result<Vec<TestBinary>> {
    let mut found = BTreeMap::new();
    for line in json_lines.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("cargo wrote {line:?}"))?;
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let manifest = v["manifest_path"].as_str().unwrap_or_default();
        let package_id = v["package_id"].as_str().unwrap_or_default();
        found.insert(
            exe.to_owned(),
            TestBinary {
                package: package_name(package_id),
                name: v["target"]["name"].as_str().unwrap_or("?").to_owned(),
                path: PathBuf::from(exe),
                manifest_dir: Path::new(manifest)
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            },
        );
    }
    Ok(found.into_values().collect())
}

/// The package name in a cargo package id (`path+file:///…/crates/wire#wg-wire@0.1.0`,
/// or the older `wg-wire 0.1.0 (path+file://…)`).
fn package_name(id: &str) -> String {
    if let Some((_, tail)) = id.rsplit_once('#') {
        let name = tail.split('@').next().unwrap_or(tail);
        // `…/crates/wire#0.1.0`: the name is the directory's.
        if name.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            return id
                .split('#')
                .next()
                .and_then(|p| p.rsplit('/').next())
                .unwrap_or(id)
                .to_owned();
        }
        return name.to_owned();
    }
    id.split(' ').next().unwrap_or(id).to_owned()
}

/// Builds `bcryptprimitives.dll` in `work` and returns its path.
fn build_shim(work: &Path) -> Result<PathBuf> {
    let source = work.join("bcryptprimitives-shim.c");
    let dll = work.join("bcryptprimitives.dll");
    std::fs::write(&source, SHIM_SOURCE)
        .with_context(|| format!("writing {}", source.display()))?;
    let mut c = Command::new(MINGW_GCC);
    c.arg("-O2")
        .arg("-shared")
        .arg("-o")
        .arg(&dll)
        .arg(&source)
        .arg("-ladvapi32");
    cmd::checked(&mut c, Duration::from_secs(120))?;
    Ok(dll)
}

/// A Wine command in our prefix, quiet, without the Mono and Gecko installers.
fn wine_command(wine: &Path, prefix: &Path) -> Command {
    let mut c = Command::new(wine);
    c.env("WINEPREFIX", prefix)
        .env("WINEDEBUG", "-all")
        .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");
    c
}

/// Creates the prefix (Wine's first start, tens of seconds) with a persistent
/// wineserver, so the tests' own runs neither pay for it nor share their output pipes
/// with a server they started.
/// Creates the prefix; a failed start of Wine (seen in CI: "could not load kernel32.dll")
/// is tried once more from scratch, loudly.
fn init_prefix(wine: &Path, wineserver: &Path, prefix: &Path) -> Result<()> {
    let Err(first) = init_prefix_once(wine, wineserver, prefix) else {
        return Ok(());
    };
    println!("wine-test: {first:#}; creating the prefix ONCE MORE from scratch");
    let mut kill = Command::new(wineserver);
    kill.arg("-k").env("WINEPREFIX", prefix);
    let _ = cmd::output(&mut kill, Duration::from_secs(30));
    if prefix.exists() {
        std::fs::remove_dir_all(prefix)
            .with_context(|| format!("removing the failed prefix {}", prefix.display()))?;
    }
    init_prefix_once(wine, wineserver, prefix)
}

fn init_prefix_once(wine: &Path, wineserver: &Path, prefix: &Path) -> Result<()> {
    let t0 = Instant::now();
    println!(
        "wine-test: creating the Wine prefix {} (first start takes a while)",
        prefix.display()
    );
    let mut server = Command::new(wineserver);
    server.arg("-p").env("WINEPREFIX", prefix);
    cmd::output(&mut server, Duration::from_secs(30))?;
    let mut boot = wine_command(wine, prefix);
    boot.args(["wineboot", "--init"]);
    let out = cmd::output(&mut boot, PREFIX_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "creating the Wine prefix failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    println!(
        "wine-test: prefix ready in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Stops the wineserver of our prefix (and with it any Wine process left) and removes
/// the prefix, on success, error or interruption.
struct WineServerGuard {
    wineserver: PathBuf,
    prefix: PathBuf,
}

impl Drop for WineServerGuard {
    fn drop(&mut self) {
        let mut kill = Command::new(&self.wineserver);
        kill.arg("-k").env("WINEPREFIX", &self.prefix);
        if let Err(e) = cmd::cleanup_output(&mut kill, Duration::from_secs(30)) {
            eprintln!("wine-test: warning: could not stop the wineserver: {e:#}");
        }
        // The server may take a moment to let go of the prefix.
        let mut wait = Command::new(&self.wineserver);
        wait.arg("-w").env("WINEPREFIX", &self.prefix);
        let _ = cmd::cleanup_output(&mut wait, Duration::from_secs(30));
        if self.prefix.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.prefix)
        {
            eprintln!(
                "wine-test: warning: could not remove {}: {e}",
                self.prefix.display()
            );
        }
    }
}

/// Whether a failed run is Wine's own failure, not a test's: its client lost the
/// connection to wineserver ("wine client error") and the executable printed no libtest
/// summary. Seen once in CI on a test executable that then passed.
fn wine_itself_failed(stdout: &str, stderr: &str) -> bool {
    !stdout.lines().any(|l| l.starts_with("test result:")) && stderr.contains("wine client error")
}

/// libtest's counts, summed over its "test result:" lines (one per executable).
fn parse_counts(stdout: &str) -> Counts {
    let mut counts = Counts::default();
    for line in stdout.lines().filter(|l| l.starts_with("test result:")) {
        for part in line.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => counts.passed += n,
                "failed" => counts.failed += n,
                "ignored" => counts.ignored += n,
                _ => {}
            }
        }
    }
    counts
}

fn print_tail(text: &str, lines: usize) {
    let all: Vec<&str> = text.lines().collect();
    for line in &all[all.len().saturating_sub(lines)..] {
        println!("    | {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_from_libtest_summary_lines() {
        let out = "running 3 tests\ntest a ... ok\n\ntest result: FAILED. 60 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.87s\n";
        let c = parse_counts(out);
        assert_eq!((c.passed, c.failed, c.ignored), (60, 1, 2));
        assert_eq!(parse_counts("no summary").passed, 0);
    }

    #[test]
    fn only_a_wine_client_error_without_test_results_is_wines_failure() {
        let lost = "wine client error:0: recvmsg: Connection reset by peer\n";
        assert!(wine_itself_failed("", lost));
        let summary = "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured\n";
        assert!(
            !wine_itself_failed(summary, lost),
            "a test failed: no retry"
        );
        assert!(!wine_itself_failed("", "thread 'main' panicked\n"));
    }

    #[test]
    fn package_names_from_both_id_formats() {
        assert_eq!(
            package_name("path+file:///work/main/crates/wire#wg-wire@0.1.0"),
            "wg-wire"
        );
        assert_eq!(package_name("path+file:///work/main/xtask#0.1.0"), "xtask");
        assert_eq!(
            package_name("wg-wire 0.1.0 (path+file:///work/main/crates/wire)"),
            "wg-wire"
        );
    }

    #[test]
    fn only_test_executables_are_collected() {
        let json = concat!(
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/crates/wire#wg-wire@0.1.0","manifest_path":"/w/crates/wire/Cargo.toml","target":{"name":"wg_wire"},"profile":{"test":true},"executable":"/t/wg_wire-1.exe"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/crates/wire#wg-wire@0.1.0","manifest_path":"/w/crates/wire/Cargo.toml","target":{"name":"wg_wire"},"profile":{"test":false},"executable":null}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
            "\n"
        );
        let found = parse_artifacts(json).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].package, "wg-wire");
        assert_eq!(found[0].path, Path::new("/t/wg_wire-1.exe"));
        assert_eq!(found[0].manifest_dir, Path::new("/w/crates/wire"));
    }
}
