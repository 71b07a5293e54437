//! `cargo xtask fuzz`: runs the cargo-fuzz targets under `fuzz/` on the stable toolchain.
//!
//! cargo-fuzz passes nightly-only flags (`-Zsanitizer=address`, …); `RUSTC_BOOTSTRAP=1`
//! makes the stable compiler accept them. Targets are the `fuzz/fuzz_targets/*.rs` files
//! (cargo-fuzz's layout: `cargo fuzz add NAME` creates `fuzz_targets/NAME.rs` and a
//! `[[bin]]` of the same name), so new targets are picked up without touching this file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Arguments of `cargo xtask fuzz`.
pub(crate) struct FuzzArgs {
    /// One target, or all in turn.
    pub(crate) target: Option<String>,
    /// libFuzzer's `-max_total_time` per target.
    pub(crate) seconds: u32,
    /// Only list the targets.
    pub(crate) list: bool,
}

/// Allowance for building the fuzz crate with sanitizers (first run compiles everything).
const BUILD_ALLOWANCE: Duration = Duration::from_secs(30 * 60);

/// The fuzz targets, sorted.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("could not read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Ok(names)
}

/// Runs the fuzz subcommand.
pub(crate) fn run(args: &FuzzArgs) -> Result<()> {
    let root = cmd::workspace_root();
    let fuzz_dir: PathBuf = root.join("fuzz");
    let all = targets(&fuzz_dir)?;
    if args.list {
        for t in &all {
            println!("{t}");
        }
        return Ok(());
    }
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let chosen = match &args.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!(
            "no fuzz target {t:?}; targets are: {} (see `cargo xtask fuzz --list`)",
            all.join(", ")
        ),
        None if all.is_empty() => bail!("no fuzz targets in {}/fuzz_targets", fuzz_dir.display()),
        None => all,
    };

    let cargo = cmd::cargo();
    let mut probe = cmd::command(&cargo, &["fuzz", "--version"]);
    let ok = cmd::output(&mut probe, Duration::from_secs(30)).is_ok_and(|o| o.status.success());
    if !ok {
        bail!("cargo-fuzz is not installed: run `cargo install cargo-fuzz --locked`");
    }

    for target in &chosen {
        let max_time = format!("-max_total_time={}", args.seconds);
        println!(
            "==> fuzz: {target} for {} s (RUSTC_BOOTSTRAP=1 cargo fuzz run {target} -- {max_time})",
            args.seconds
        );
        let mut c = cmd::command(&cargo, &["fuzz", "run", target.as_str(), "--", &max_time]);
        c.current_dir(&root).env("RUSTC_BOOTSTRAP", "1");
        let timeout = BUILD_ALLOWANCE + Duration::from_secs(u64::from(args.seconds) + 60);
        let status = cmd::status_inherit(&mut c, timeout)?;
        if !status.success() {
            bail!(
                "fuzz target {target} failed ({status}); a crash input, if any, is under \
                 fuzz/artifacts/{target}/ (reproduce with `RUSTC_BOOTSTRAP=1 cargo fuzz run \
                 {target} fuzz/artifacts/{target}/FILE`)"
            );
        }
    }
    println!("fuzz: {} target(s) ran without a crash", chosen.len());
    Ok(())
}
