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
    /// The whole workspace for one of [`PORT_TARGETS`]: clippy over every target kind.
    Port(&'static PortTarget),
    /// `cargo xtask wine-test`: the portable tests, built with MinGW, run under Wine.
    WineTest,
}

const MIN: u64 = 60;

/// Time allowed to each Windows test executable under Wine (`wine-test`'s own default).
const WINE_TEST_TIMEOUT_SECS: u64 = 600;

/// The app library's other platforms: it must at least compile there (only Linux runs
/// here). Checked with the pure-Rust AEAD (`--no-default-features`): ring's C and
/// assembly need the target's C toolchain (Android NDK, Xcode), which this machine has
/// not.
pub(crate) const CROSS_TARGETS: [&str; 2] = ["aarch64-linux-android", "aarch64-apple-ios"];

/// An OS the whole workspace must compile for, although only Linux runs here (issue 15).
pub(crate) struct PortTarget {
    /// The Rust target triple.
    pub(crate) triple: &'static str,
    /// The step's name in the summary.
    step: &'static str,
    /// Whether ring's and AWS-LC's C can be cross-built here. If not, the check runs with
    /// `--no-default-features`: the pure-Rust AEAD (RustCrypto) and X25519 (dalek).
    pub(crate) c_cross_builds: bool,
}

/// The targets of the `port` steps: clippy with `-D warnings` over the whole workspace and
/// `--all-targets`, which type-checks every test, bench and example (the test build short
/// of linking: there is no linker or system library for Apple or the BSDs here; Windows
/// tests are linked with MinGW and run by the `wine-test` step). Apple and the BSDs have
/// no C toolchain here, so they are checked with the pure-Rust crypto; MinGW builds ring
/// and AWS-LC for Windows. OpenBSD is tier 3 (no prebuilt std): not checked. The README's
/// platform table says the same.
pub(crate) const PORT_TARGETS: [PortTarget; 5] = [
    PortTarget {
        triple: "x86_64-apple-darwin",
        step: "port: macos x86_64",
        c_cross_builds: false,
    },
    PortTarget {
        triple: "aarch64-apple-darwin",
        step: "port: macos aarch64",
        c_cross_builds: false,
    },
    PortTarget {
        triple: "x86_64-unknown-freebsd",
        step: "port: freebsd",
        c_cross_builds: false,
    },
    PortTarget {
        triple: "x86_64-unknown-netbsd",
        step: "port: netbsd",
        c_cross_builds: false,
    },
    PortTarget {
        triple: "x86_64-pc-windows-gnu",
        step: "port: windows",
        c_cross_builds: true,
    },
];

/// Every Rust target CI builds for, each once: [`CROSS_TARGETS`], [`PORT_TARGETS`] and
/// `wine-test`'s.
pub(crate) fn rust_targets() -> Vec<&'static str> {
    let mut targets: Vec<&'static str> = CROSS_TARGETS.to_vec();
    targets.extend(PORT_TARGETS.iter().map(|t| t.triple));
    targets.push(crate::wine::TARGET);
    let mut seen = std::collections::HashSet::new();
    targets.retain(|t| seen.insert(*t));
    targets
}

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
    for target in &PORT_TARGETS {
        steps.push(Step {
            name: target.step,
            kind: StepKind::Port(target),
            timeout: Duration::ZERO,
        });
    }
    steps.push(Step {
        name: "wine-test (windows)",
        kind: StepKind::WineTest,
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
            StepKind::Port(target) => port_check(&cargo, &root, target),
            StepKind::WineTest => crate::wine::run(&crate::wine::WineTestArgs {
                crates: Vec::new(),
                timeout_secs: WINE_TEST_TIMEOUT_SECS,
            }),
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
    for target in CROSS_TARGETS {
        add_rust_target(target)?;
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

/// `cargo clippy --workspace --all-targets --target T -- -D warnings`, with
/// `--no-default-features` where the C crypto cannot be cross-built, adding the target
/// with rustup first where missing.
fn port_check(cargo: &str, root: &std::path::Path, target: &PortTarget) -> Result<()> {
    add_rust_target(target.triple)?;
    let mut args = vec!["clippy", "--workspace", "--all-targets"];
    if !target.c_cross_builds {
        args.push("--no-default-features");
    }
    args.extend(["--target", target.triple, "--", "-D", "warnings"]);
    let mut clippy = cmd::command(cargo, &args);
    clippy.current_dir(root);
    println!("    $ {}", cmd::describe(&clippy));
    let status = cmd::status_inherit(&mut clippy, Duration::from_secs(30 * MIN))?;
    if !status.success() {
        bail!(
            "the workspace does not pass clippy for {}: `{}` exited with {status}",
            target.triple,
            cmd::describe(&clippy)
        );
    }
    Ok(())
}

/// `rustup target add TARGET` unless rustup lists it as installed already.
fn add_rust_target(target: &str) -> Result<()> {
    let mut list = cmd::command::<&str>("rustup", &["target", "list", "--installed"]);
    let installed = cmd::output(&mut list, Duration::from_secs(60))
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if installed.lines().any(|l| l.trim() == target) {
        return Ok(());
    }
    let mut add = cmd::command("rustup", &["target", "add", target]);
    println!("    $ {}", cmd::describe(&add));
    let status = cmd::status_inherit(&mut add, Duration::from_secs(15 * MIN))?;
    if !status.success() {
        bail!(
            "`rustup target add {target}` failed ({status}); check the network or add it by hand"
        );
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
