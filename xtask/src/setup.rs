//! `cargo xtask setup`: an idempotent installer of everything CI and the demo need on a
//! fresh Debian machine. It only acts on what is missing and says what it does.

use std::time::Duration;

use anyhow::{Result, bail};

use crate::cmd;

/// Debian packages: namespaces and ping, throughput, `wg` and the reference userspace
/// implementation, the known-answer generator's crypto, the nspawn test's debootstrap
/// and systemd-nspawn, and the C compiler and valgrind of the C-ABI test
/// (`tests/e2e/tests/ffi.rs`).
const PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "iperf3",
    "wireguard-tools",
    "wireguard-go",
    "python3-cryptography",
    "debootstrap",
    "systemd-container",
    "gcc",
    "libc6-dev",
    "valgrind",
    // `cargo xtask wine-test`: the MinGW cross compiler (ring's and aws-lc's C, the
    // bcryptprimitives shim), NASM (aws-lc's Windows assembly) and Wine to run the tests.
    "gcc-mingw-w64-x86-64",
    "nasm",
    "wine64",
];

/// Runs the installer.
pub(crate) fn run() -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "cargo xtask setup installs Debian packages and must run as root: run it as root \
             (e.g. `sudo -E cargo xtask setup`)"
        );
    }
    apt()?;
    worker_users()?;
    cargo_deny()?;
    boringtun()?;
    cbindgen()?;
    rustup_components()?;
    rustup_targets()?;
    println!("setup: done");
    Ok(())
}

fn installed(package: &str) -> Result<bool> {
    let mut c = cmd::command("dpkg-query", &["-W", "-f=${Status}", package]);
    let out = cmd::output(&mut c, Duration::from_secs(30))?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

fn apt() -> Result<()> {
    let mut missing = Vec::new();
    for p in PACKAGES {
        if installed(p)? {
            println!("setup: {p}: already installed");
        } else {
            println!("setup: {p}: missing");
            missing.push(*p);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: running apt-get update");
    let mut c = cmd::command::<&str>("apt-get", &["update"]);
    c.env("DEBIAN_FRONTEND", "noninteractive");
    let status = cmd::status_inherit(&mut c, Duration::from_secs(10 * 60))?;
    if !status.success() {
        bail!("`apt-get update` failed ({status}); check the network and /etc/apt/sources.list");
    }
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    println!("setup: running apt-get {}", args.join(" "));
    let mut c = cmd::command("apt-get", &args);
    c.env("DEBIAN_FRONTEND", "noninteractive");
    let status = cmd::status_inherit(&mut c, Duration::from_secs(20 * 60))?;
    if !status.success() {
        bail!(
            "`apt-get install` of {} failed ({status}); see apt's messages above",
            missing.join(" ")
        );
    }
    Ok(())
}

/// The dedicated system users the daemon's key process and data plane run as (what the
/// package's sysusers.d snippet creates; see docs/packaging.md).
const WORKER_USERS: [&str; 2] = ["wireguard-rs-keyd", "wireguard-rs-datad"];

fn worker_users() -> Result<()> {
    for user in WORKER_USERS {
        let mut c = cmd::command("getent", &["passwd", user]);
        if cmd::output(&mut c, Duration::from_secs(10))?
            .status
            .success()
        {
            println!("setup: user {user}: exists");
            continue;
        }
        println!("setup: creating system user {user}");
        let mut c = cmd::command(
            "useradd",
            &[
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "wireguard-rs worker",
                user,
            ],
        );
        let status = cmd::status_inherit(&mut c, Duration::from_secs(30))?;
        if !status.success() {
            bail!("`useradd --system {user}` failed ({status}); see its message above");
        }
    }
    Ok(())
}

fn cargo_deny() -> Result<()> {
    let cargo = cmd::cargo();
    let mut c = cmd::command(&cargo, &["deny", "--version"]);
    let out = cmd::output(&mut c, Duration::from_secs(30))?;
    if out.status.success() {
        println!(
            "setup: cargo-deny: already installed ({})",
            String::from_utf8_lossy(&out.stdout).trim()
        );
        return Ok(());
    }
    println!("setup: running cargo install cargo-deny --locked");
    let mut c = cmd::command(&cargo, &["install", "cargo-deny", "--locked"]);
    let status = cmd::status_inherit(&mut c, Duration::from_secs(45 * 60))?;
    if !status.success() {
        bail!("`cargo install cargo-deny --locked` failed ({status}); see cargo's messages above");
    }
    Ok(())
}

/// boringtun's userspace daemon, the third implementation of the end-to-end interop
/// tests (`tests/e2e`); it is not packaged by Debian.
fn boringtun() -> Result<()> {
    let mut c = cmd::command::<&str>("boringtun-cli", &["--version"]);
    if let Ok(out) = cmd::output(&mut c, Duration::from_secs(30))
        && out.status.success()
    {
        println!(
            "setup: boringtun-cli: already installed ({})",
            String::from_utf8_lossy(&out.stdout).trim()
        );
        return Ok(());
    }
    println!("setup: running cargo install boringtun-cli --locked");
    let mut c = cmd::command(&cmd::cargo(), &["install", "boringtun-cli", "--locked"]);
    let status = cmd::status_inherit(&mut c, Duration::from_secs(45 * 60))?;
    if !status.success() {
        bail!(
            "`cargo install boringtun-cli --locked` failed ({status}); see cargo's messages above"
        );
    }
    if !cmd::on_path("boringtun-cli") {
        println!(
            "setup: note: boringtun-cli was installed into cargo's bin directory, which is not on \
             PATH; the end-to-end tests also look in ~/.cargo/bin (or set WG_E2E_BORINGTUN)"
        );
    }
    Ok(())
}

/// cbindgen, which generates the C header of wg-ffi (checked by `crates/ffi/tests/header.rs`):
/// a tool, not a dependency (its MPL-2.0 license is not in deny.toml's allow-list, and
/// nothing built links it).
fn cbindgen() -> Result<()> {
    let mut c = cmd::command::<&str>("cbindgen", &["--version"]);
    let home_bin = std::env::var_os("HOME")
        .map(|h| std::path::Path::new(&h).join(".cargo/bin/cbindgen"))
        .filter(|p| p.is_file());
    if let Ok(out) = cmd::output(&mut c, Duration::from_secs(30))
        && out.status.success()
    {
        println!(
            "setup: cbindgen: already installed ({})",
            String::from_utf8_lossy(&out.stdout).trim()
        );
        return Ok(());
    }
    if let Some(path) = home_bin {
        println!("setup: cbindgen: already installed ({})", path.display());
        return Ok(());
    }
    println!("setup: running cargo install cbindgen --locked");
    let mut c = cmd::command(&cmd::cargo(), &["install", "cbindgen", "--locked"]);
    let status = cmd::status_inherit(&mut c, Duration::from_secs(45 * 60))?;
    if !status.success() {
        bail!("`cargo install cbindgen --locked` failed ({status}); see cargo's messages above");
    }
    Ok(())
}

/// The Rust targets `cargo xtask ci` builds for (see `crate::ci::rust_targets`): the app
/// library's cross checks, the whole workspace's `port:` checks and `wine-test`.
fn rustup_targets() -> Result<()> {
    let wanted = crate::ci::rust_targets();
    if !cmd::on_path("rustup") {
        println!(
            "setup: rustup is not on PATH: add the targets {} with your toolchain manager",
            wanted.join(" ")
        );
        return Ok(());
    }
    let mut c = cmd::command::<&str>("rustup", &["target", "list", "--installed"]);
    let out = cmd::output(&mut c, Duration::from_secs(60))?;
    let installed = String::from_utf8_lossy(&out.stdout).into_owned();
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        println!("setup: rust targets {}: installed", wanted.join(" "));
        return Ok(());
    }
    let mut args = vec!["target", "add"];
    args.extend(&missing);
    println!("setup: running rustup {}", args.join(" "));
    let status = cmd::status_inherit(
        &mut cmd::command("rustup", &args),
        Duration::from_secs(15 * 60),
    )?;
    if !status.success() {
        bail!("`rustup {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn rustup_components() -> Result<()> {
    let cargo = cmd::cargo();
    let mut missing = Vec::new();
    for (component, sub) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        let mut c = cmd::command(&cargo, &[sub, "--version"]);
        let out = cmd::output(&mut c, Duration::from_secs(30))?;
        if out.status.success() {
            println!("setup: {component}: already installed");
        } else {
            missing.push(component);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::on_path("rustup") {
        bail!(
            "{} missing and rustup is not on PATH: install them with your toolchain manager",
            missing.join(" and ")
        );
    }
    let mut args = vec!["component", "add"];
    args.extend(&missing);
    println!("setup: running rustup {}", args.join(" "));
    let status = cmd::status_inherit(
        &mut cmd::command("rustup", &args),
        Duration::from_secs(15 * 60),
    )?;
    if !status.success() {
        bail!("`rustup {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
