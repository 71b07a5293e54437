//! `cargo xtask ci`: the project's whole check, in order, stopping at the first failure.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::cmd;

/// One step: a name for the summary and what it runs.
struct Step {
    name: &'static str,
    kind: StepKind,
    timeout: Duration,
}

enum StepKind {
    Command(Command),
    SelfTest,
    /// `cargo xtask nspawn-test`: the .deb and its unit in a booted Debian container.
    Nspawn,
    /// `cargo xtask install` into a temporary destdir, then its checks.
    Install,
    /// `cargo check` of the app library for [`CROSS_TARGETS`].
    Cross,
}

const MIN: u64 = 60;

/// The app library's other platforms: it must at least compile there (only Linux runs
/// here). Checked with the pure-Rust AEAD (`--no-default-features`): ring's C and
/// assembly need the target's C toolchain (Android NDK, Xcode), which this machine has
/// not.
pub(crate) const CROSS_TARGETS: [&str; 2] = ["aarch64-linux-android", "aarch64-apple-ios"];

/// Runs every step; prints a summary with durations at the end (also on failure).
pub(crate) fn run() -> Result<()> {
    let root = cmd::workspace_root();
    let cargo = cmd::cargo();
    let at_root = |program: &str, args: &[&str]| {
        let mut c = cmd::command(program, args);
        c.current_dir(&root);
        c
    };

    let mut steps = vec![
        Step {
            name: "fmt",
            kind: StepKind::Command(at_root(&cargo, &["fmt", "--all", "--", "--check"])),
            timeout: Duration::from_secs(5 * MIN),
        },
        Step {
            name: "clippy",
            kind: StepKind::Command(at_root(
                &cargo,
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            )),
            timeout: Duration::from_secs(40 * MIN),
        },
    ];
    if nextest_available(&cargo) {
        steps.push(Step {
            name: "test (nextest)",
            kind: StepKind::Command(at_root(&cargo, &["nextest", "run", "--workspace"])),
            timeout: Duration::from_secs(40 * MIN),
        });
        steps.push(Step {
            name: "doctests",
            kind: StepKind::Command(at_root(&cargo, &["test", "--workspace", "--doc"])),
            timeout: Duration::from_secs(20 * MIN),
        });
    } else {
        steps.push(Step {
            name: "test",
            kind: StepKind::Command(at_root(&cargo, &["test", "--workspace"])),
            timeout: Duration::from_secs(40 * MIN),
        });
    }
    steps.push(Step {
        name: "handshake KAT (python)",
        kind: StepKind::Command(at_root(
            &python_with_cryptography(),
            &["tests/vectors/gen_handshake_kat.py", "--check"],
        )),
        timeout: Duration::from_secs(5 * MIN),
    });
    // Only these three checks: `advisories` needs the RustSec advisory database, which
    // this machine cannot fetch (crates.io is the only Rust registry it reaches).
    steps.push(Step {
        name: "cargo deny",
        kind: StepKind::Command(at_root(
            &cargo,
            &["deny", "check", "licenses", "bans", "sources"],
        )),
        timeout: Duration::from_secs(10 * MIN),
    });
    steps.push(Step {
        name: "cross-check (android, ios)",
        kind: StepKind::Cross,
        timeout: Duration::ZERO,
    });
    steps.push(Step {
        name: "install layout",
        kind: StepKind::Install,
        timeout: Duration::ZERO,
    });
    steps.push(Step {
        name: "netns-selftest",
        kind: StepKind::SelfTest,
        timeout: Duration::ZERO,
    });
    steps.push(Step {
        name: "nspawn-test (.deb)",
        kind: StepKind::Nspawn,
        timeout: Duration::ZERO,
    });

    let total = Instant::now();
    let mut done: Vec<(&str, Duration, bool)> = Vec::new();
    let mut failure = None;
    for step in &mut steps {
        println!("\n==> ci: {}", step.name);
        let start = Instant::now();
        let result = match &mut step.kind {
            StepKind::Command(c) => {
                println!("    $ {}", cmd::describe(c));
                cmd::status_inherit(c, step.timeout).and_then(|status| {
                    if status.success() {
                        Ok(())
                    } else {
                        bail!("`{}` exited with {status}", cmd::describe(c))
                    }
                })
            }
            StepKind::Install => crate::install::self_check(),
            StepKind::Cross => cross_check(&cargo, &root),
            StepKind::Nspawn => crate::nspawn::ci_step(),
            StepKind::SelfTest => crate::selftest::run().and_then(|code| {
                if code == std::process::ExitCode::SUCCESS {
                    Ok(())
                } else {
                    bail!("netns-selftest failed")
                }
            }),
        };
        let ok = result.is_ok();
        done.push((step.name, start.elapsed(), ok));
        if let Err(e) = result {
            failure = Some((step.name, e));
            break;
        }
    }

    println!("\n==> ci summary");
    for (name, d, ok) in &done {
        println!(
            "    {:<24} {:>8.1} s  {}",
            name,
            d.as_secs_f64(),
            if *ok { "ok" } else { "FAILED" }
        );
    }
    for step in steps.iter().skip(done.len()) {
        println!("    {:<24} {:>8}    not run", step.name, "-");
    }
    println!(
        "    {:<24} {:>8.1} s",
        "total",
        total.elapsed().as_secs_f64()
    );
    match failure {
        Some((name, e)) => bail!("ci step `{name}` failed: {e:#}"),
        None => {
            println!("ci: all {} steps passed", done.len());
            Ok(())
        }
    }
}

/// `cargo check -p wg-ffi -p wg-tunnel --no-default-features --target T` for each of
/// [`CROSS_TARGETS`], adding the targets with rustup first where missing.
fn cross_check(cargo: &str, root: &std::path::Path) -> Result<()> {
    let mut list = cmd::command::<&str>("rustup", &["target", "list", "--installed"]);
    let installed = cmd::output(&mut list, Duration::from_secs(60))
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for target in CROSS_TARGETS {
        if !installed.lines().any(|l| l.trim() == target) {
            let mut add = cmd::command("rustup", &["target", "add", target]);
            println!("    $ {}", cmd::describe(&add));
            let status = cmd::status_inherit(&mut add, Duration::from_secs(15 * MIN))?;
            if !status.success() {
                bail!("`rustup target add {target}` failed ({status})");
            }
        }
        let mut check = cmd::command(
            cargo,
            &[
                "check",
                "-p",
                "wg-ffi",
                "-p",
                "wg-tunnel",
                "--no-default-features",
                "--target",
                target,
            ],
        );
        check.current_dir(root);
        println!("    $ {}", cmd::describe(&check));
        let status = cmd::status_inherit(&mut check, Duration::from_secs(30 * MIN))?;
        if !status.success() {
            bail!(
                "the app library does not compile for {target}: `{}` exited with {status}",
                cmd::describe(&check)
            );
        }
    }
    Ok(())
}

fn nextest_available(cargo: &str) -> bool {
    let mut c = cmd::command(cargo, &["nextest", "--version"]);
    cmd::output(&mut c, Duration::from_secs(30)).is_ok_and(|o| o.status.success())
}

/// `python3` if it can import `cryptography`; else Debian's `/usr/bin/python3` (where
/// `python3-cryptography` installs) if that can; else `python3` (which then fails with
/// Python's own ImportError).
fn python_with_cryptography() -> String {
    for python in ["python3", "/usr/bin/python3"] {
        let mut c = cmd::command(python, &["-c", "import cryptography"]);
        if cmd::output(&mut c, Duration::from_secs(30)).is_ok_and(|o| o.status.success()) {
            return python.to_owned();
        }
    }
    "python3".to_owned()
}
