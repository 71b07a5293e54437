//! `cargo xtask nspawn-test` (root): the package and its systemd unit, for real.
//!
//! A fresh Debian root (`debootstrap --variant=minbase`, the host's suite, cached under
//! `target/nspawn/<suite>-<arch>/`) boots under `systemd-nspawn -b` with a throwaway
//! overlay (`--volatile=overlay`: the cached root is never written), inside a network
//! namespace this test made. A veth joins it to a second namespace where the host's
//! `wireguard-go` is the peer. Inside the container: `dpkg -i` of the `.deb` from
//! `cargo xtask deb`, `/etc/wireguard/wgt0.conf` as an administrator writes it,
//! `systemctl start wireguard-rs@wgt0`, then the checks (address, ping through the tunnel,
//! handshake, users, directory and socket modes, a clean stop, the interface gone, purge).
//!
//! Commands run in the container through `nsenter` into its init's namespaces, so the
//! test needs neither systemd nor machined on the host; nothing of the host's systemd is
//! touched (no `--register`, no units). Every step has a timeout; the container is
//! powered off (SIGRTMIN+4 to its init, then killed) and the namespaces deleted on success,
//! failure and Ctrl-C alike.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, Background};
use crate::netns::{self, Namespace, RunNames, TwoHosts};

/// Name tag of the test's namespaces (`wgrsn<pid>a`, …).
pub(crate) const TAG: &str = "wgrsn";
/// The tunnel interface inside the container.
const IFACE: &str = "wgt0";
/// Tunnel addresses: the container and the wireguard-go peer.
const TUNNEL_C: &str = "10.205.0.1";
const TUNNEL_P: &str = "10.205.0.2";
const LISTEN_PORT: u16 = 51820;
/// What debootstrap adds to minbase: an init, `ip`, `ping`, `wg`/`wg-quick`.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "iputils-ping",
    "wireguard-tools",
];
const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const SHORT: Duration = Duration::from_secs(30);
/// A shell function listing the PIDs whose command is wireguard-rs (minbase has no pgrep).
const DAEMONS: &str = "daemons() { grep -lx wireguard-rs /proc/[0-9]*/comm 2>/dev/null | cut -d/ -f3 | tr '\\n' ' '; }";
/// PATH inside the container.
const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Arguments of `cargo xtask nspawn-test`.
pub(crate) struct NspawnArgs {
    /// Package the binaries already built.
    pub(crate) no_build: bool,
    /// Debian suite of the container (default: the host's `VERSION_CODENAME`).
    pub(crate) suite: Option<String>,
    /// Mirror for debootstrap (default: the host's first Debian apt source).
    pub(crate) mirror: Option<String>,
    /// Rebuild the cached root even if it is up to date.
    pub(crate) refresh: bool,
}

/// One line of the PASS/FAIL table.
struct Check {
    name: String,
    ok: bool,
    detail: String,
}

/// Runs the test and prints the table; exit 1 if any check failed.
pub(crate) fn run(args: &NspawnArgs) -> Result<ExitCode> {
    if !cmd::is_root() {
        bail!("cargo xtask nspawn-test must run as root (debootstrap, systemd-nspawn, namespaces)");
    }
    let missing: Vec<&str> = [
        "debootstrap",
        "systemd-nspawn",
        "nsenter",
        "ip",
        "wg",
        "wireguard-go",
        "dpkg-deb",
    ]
    .into_iter()
    .filter(|t| !cmd::on_path(t))
    .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {}; install them with `apt-get install debootstrap systemd-container \
             util-linux iproute2 wireguard-tools wireguard-go dpkg`",
            missing.join(", ")
        );
    }
    netns::warn_stale(&[TAG]);
    let total = Instant::now();
    let mut timings: Vec<(&str, Duration)> = Vec::new();

    let t = Instant::now();
    let deb = crate::deb::build(&crate::deb::DebArgs {
        no_build: args.no_build,
        out: None,
    })?;
    timings.push(("build .deb", t.elapsed()));

    let t = Instant::now();
    let root = ensure_root(args)?;
    timings.push(("debootstrap (or cache)", t.elapsed()));

    let t = Instant::now();
    let mut checks = Vec::new();
    let result = in_container(&root, &deb, &mut checks);
    timings.push(("container test", t.elapsed()));

    println!("\nnspawn-test: results");
    for c in &checks {
        println!(
            "    {:<4} {:<38} {}",
            if c.ok { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    for (what, d) in &timings {
        println!("    time {:<38} {:>6.1} s", what, d.as_secs_f64());
    }
    println!(
        "    time {:<38} {:>6.1} s",
        "total",
        total.elapsed().as_secs_f64()
    );
    result?;
    if cmd::interrupted() {
        bail!("interrupted; everything it made is cleaned up");
    }
    if checks.iter().all(|c| c.ok) {
        println!("nspawn-test: PASS");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("nspawn-test: FAIL");
        Ok(ExitCode::FAILURE)
    }
}

/// The `cargo xtask ci` step: the whole test (building the .deb first), skipped when not
/// root, as the netns self-test is.
pub(crate) fn ci_step() -> Result<()> {
    if !cmd::is_root() {
        println!("nspawn-test: SKIPPED: not root (debootstrap and systemd-nspawn need root)");
        return Ok(());
    }
    let code = run(&NspawnArgs {
        no_build: false,
        suite: None,
        mirror: None,
        refresh: false,
    })?;
    if code != ExitCode::SUCCESS {
        bail!("nspawn-test failed (see the table above)");
    }
    Ok(())
}

/// The cached root for the suite, made by debootstrap if missing or out of date.
fn ensure_root(args: &NspawnArgs) -> Result<PathBuf> {
    let suite = match &args.suite {
        Some(s) => s.clone(),
        None => host_suite()?,
    };
    let mirror = match &args.mirror {
        Some(m) => m.clone(),
        None => host_mirror()?,
    };
    let arch = cmd::checked(&mut cmd::command("dpkg", &["--print-architecture"]), SHORT)?
        .trim()
        .to_owned();
    let dir = cmd::workspace_root()
        .join("target/nspawn")
        .join(format!("{suite}-{arch}"));
    let root = dir.join("root");
    let stamp = dir.join("root.stamp");
    let want = format!(
        "suite={suite}\narch={arch}\nvariant=minbase\ninclude={}\n",
        PACKAGES.join(",")
    );
    if !args.refresh
        && root.join("usr/lib/systemd/systemd").exists()
        && fs::read_to_string(&stamp).is_ok_and(|s| s == want)
    {
        println!("nspawn-test: cached root {}", root.display());
        return Ok(root);
    }
    let new = dir.join("root.new");
    remove_root(&new)?;
    if root.exists() {
        let _ = fs::remove_file(&stamp);
        remove_root(&root)?;
    }
    fs::create_dir_all(&dir)?;
    println!(
        "nspawn-test: debootstrap {suite} ({arch}, minbase + {}) from {mirror} into {} \
         (first run: minutes)",
        PACKAGES.join(" "),
        new.display()
    );
    let include = format!("--include={}", PACKAGES.join(","));
    let mut c = cmd::command(
        "debootstrap",
        &[
            "--variant=minbase",
            &include,
            &format!("--arch={arch}"),
            &suite,
            new.to_str().context("the cache path is not UTF-8")?,
            &mirror,
        ],
    );
    let out = cmd::output(&mut c, DEBOOTSTRAP_TIMEOUT);
    let failed = match &out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "exited with {}: {}",
            o.status,
            tail(&String::from_utf8_lossy(&o.stdout), 15)
        )),
        Err(e) => Some(format!("{e:#}")),
    };
    if let Some(why) = failed {
        let log = new.join("debootstrap/debootstrap.log");
        let log = fs::read_to_string(&log)
            .map(|l| tail(&l, 15))
            .unwrap_or_default();
        let _ = remove_root(&new);
        bail!(
            "debootstrap of {suite} from {mirror} failed ({why}); {log}\nIs the mirror \
             reachable from here (proxy: http_proxy)? Give another with --mirror URL"
        );
    }
    // The downloaded .debs are not needed in the cached root.
    if let Ok(entries) = fs::read_dir(new.join("var/cache/apt/archives")) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    fs::rename(&new, &root).context("moving the new root into place")?;
    fs::write(&stamp, want)?;
    Ok(root)
}

/// Unmounts whatever an interrupted debootstrap left mounted under `dir` (proc, sys),
/// then removes it.
fn remove_root(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let prefix = format!("{}/", dir.display());
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut under: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    under.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in under {
        let _ = cmd::cleanup_output(&mut cmd::command("umount", &["-l", m]), SHORT);
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// `VERSION_CODENAME` of /etc/os-release.
fn host_suite() -> Result<String> {
    let text = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release has no VERSION_CODENAME; pass --suite")
}

/// The first `deb` URI of the host's apt sources that serves the main archive (not
/// -security, not a third-party repository): deb822 `.sources` files, then
/// `sources.list`.
fn host_mirror() -> Result<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let name = f.to_string_lossy().into_owned();
        if !(name.ends_with(".list") || name.ends_with(".sources")) {
            continue;
        }
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim();
            let uri = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.contains("://"))
            } else {
                None
            };
            if let Some(uri) = uri
                && uri.trim_end_matches('/').ends_with("/debian")
            {
                return Ok(uri.to_owned());
            }
        }
    }
    bail!("no Debian mirror in /etc/apt/sources.list*; pass --mirror URL")
}

/// The booted container: its machine name, the nspawn process and its init's PID.
struct Container {
    machine: String,
    nspawn: Background,
    leader: u32,
}

impl Container {
    /// A command run inside the container (all of init's namespaces and its root), with
    /// a clean environment.
    fn command(&self, script: &str) -> std::process::Command {
        let t = self.leader.to_string();
        cmd::command(
            "nsenter",
            &[
                "-t",
                &t,
                "-m",
                "-u",
                "-i",
                "-n",
                "-p",
                "-r",
                "-w",
                "--",
                "/usr/bin/env",
                "-i",
                PATH,
                "LANG=C",
                "/bin/sh",
                "-c",
                script,
            ],
        )
    }

    /// Runs `script` inside; Ok(stdout) on exit 0, Err quoting the script and its
    /// output otherwise.
    fn sh(&self, script: &str, timeout: Duration) -> Result<String> {
        self.sh_stdin(script, &[], timeout)
    }

    /// Runs `script` inside, feeding `input`.
    fn sh_stdin(&self, script: &str, input: &[u8], timeout: Duration) -> Result<String> {
        let mut c = self.command(script);
        let out = cmd::output_with_stdin(&mut c, input, timeout)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let all = format!("{}{}", stdout, String::from_utf8_lossy(&out.stderr));
            bail!(
                "`{script}` in the container: {}: {}",
                out.status,
                all.trim()
            );
        }
        Ok(stdout)
    }

    /// Powers the container off (SIGRTMIN+4 to its init) and waits for nspawn to end;
    /// kills nspawn if it does not.
    fn poweroff(&mut self) {
        if let Ok(None) = self.nspawn.poll_exit() {
            let sig = libc_sigrtmin() + 4;
            let _ = cmd::cleanup_output(
                &mut cmd::command("kill", &[format!("-{sig}"), self.leader.to_string()]),
                SHORT,
            );
            if !matches!(self.nspawn.wait_exit(Duration::from_secs(20)), Ok(Some(_))) {
                eprintln!(
                    "nspawn-test: container {} did not power off; killing it",
                    self.machine
                );
                self.nspawn.stop(Duration::from_secs(5));
            }
        }
        // nspawn refuses to remove this directory when /run is not a tmpfs (as here).
        let _ = fs::remove_dir_all(Path::new("/run/systemd/nspawn/propagate").join(&self.machine));
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.poweroff();
    }
}

/// SIGRTMIN as the kernel numbers it (glibc reserves two: 34 + 0).
fn libc_sigrtmin() -> i32 {
    34
}

/// Boots the container in namespace `ns` and waits until its systemd is up.
fn boot(root: &Path, ns: &Namespace, share: &Path, log: &Path) -> Result<Container> {
    let machine = format!("wgrs-test-{}", std::process::id());
    let mut c = cmd::command::<&str>("systemd-nspawn", &[]);
    c.arg("--boot")
        .arg("--directory")
        .arg(root)
        .arg(format!("--machine={machine}"))
        .arg(format!("--hostname={machine}"))
        // The cached root stays pristine: writes go to a tmpfs overlay.
        .arg("--volatile=overlay")
        // No machined, no scope unit: the host needs no systemd.
        .arg("--register=no")
        .arg("--keep-unit")
        .arg("--link-journal=no")
        .arg("--resolv-conf=off")
        .arg("--timezone=off")
        .arg(format!("--network-namespace-path=/run/netns/{}", ns.name()))
        // CAP_NET_ADMIN: not implied by --network-namespace-path (it is by
        // --private-network); the daemon makes its TUN device with it. CAP_IPC_LOCK:
        // nspawn's own seccomp filter refuses the @memlock system calls (mlockall: EPERM) to
        // a container without it, and keyd will not hold keys it cannot lock. A host's
        // PID 1 has it; the unit's CapabilityBoundingSet still keeps it from the daemon.
        .arg("--capability=CAP_NET_ADMIN,CAP_IPC_LOCK")
        .arg("--bind=/dev/net/tun")
        .arg(format!("--bind-ro={}:/mnt/wgrs-test", share.display()))
        .arg("--console=read-only");
    if Path::new("/run/systemd/system").exists() {
        // The host runs systemd: the container's scope may use the TUN device.
        c.arg("--property=DeviceAllow=/dev/net/tun rwm");
    }
    println!("nspawn-test: {}", cmd::describe(&c));
    let mut nspawn = Background::spawn("systemd-nspawn", &mut c, Some(log))?;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let leader = loop {
        if let Some(status) = nspawn.poll_exit()? {
            bail!(
                "systemd-nspawn exited ({status}) before the container booted:\n{}",
                nspawn.log_tail(20)
            );
        }
        if let Some(pid) = init_of(nspawn.pid()) {
            break pid;
        }
        if Instant::now() > deadline {
            bail!("no container init under systemd-nspawn after {BOOT_TIMEOUT:?}");
        }
        cmd::sleep(Duration::from_millis(200))?;
    };
    let container = Container {
        machine,
        nspawn,
        leader,
    };
    // `--wait` until boot finished; "degraded" (some unit failed) is reported, not fatal.
    // Early on, systemd may not answer yet: try again until the deadline.
    let state = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut c = container.command("systemctl is-system-running --wait");
        let out = cmd::output(&mut c, remaining.max(Duration::from_secs(5)))?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if matches!(
            state.as_str(),
            "running" | "degraded" | "maintenance" | "stopping"
        ) {
            break state;
        }
        if Instant::now() > deadline {
            bail!(
                "the container did not finish booting in {BOOT_TIMEOUT:?} (state {state:?}: {}); \
                 its console:\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                tail(&fs::read_to_string(log).unwrap_or_default(), 20)
            );
        }
        cmd::sleep(Duration::from_millis(300))?;
    };
    if state != "running" {
        let failed = container
            .sh("systemctl --failed --no-legend --plain", SHORT)
            .unwrap_or_default();
        println!(
            "nspawn-test: container state {state:?}; failed units: {}",
            failed.trim()
        );
        if state != "degraded" {
            bail!("the container is {state:?} after boot");
        }
    }
    Ok(container)
}

/// The PID (in our namespace) of the container's init: a descendant of nspawn whose PID
/// in its own namespace is 1.
fn init_of(nspawn: u32) -> Option<u32> {
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.split_whitespace().collect::<Vec<_>>())
        };
        let ppid = field("PPid:").and_then(|v| v.first().and_then(|p| p.parse::<u32>().ok()));
        let nspid = field("NSpid:").unwrap_or_default();
        // Only once it runs systemd: before its exec, nspawn's child is still setting up
        // the container's mounts.
        let is_init =
            fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == "systemd");
        if ppid == Some(nspawn) && nspid.len() >= 2 && nspid.last() == Some(&"1") && is_init {
            return Some(pid);
        }
    }
    None
}

/// Everything from the namespaces on; appends to `checks` as it goes.
fn in_container(root: &Path, deb: &Path, checks: &mut Vec<Check>) -> Result<()> {
    let names = RunNames::new(TAG)?;
    let hosts = TwoHosts::create(&names)?;
    let (cns, pns) = (&hosts.a, &hosts.b);
    let work = cmd::workspace_root()
        .join("target/nspawn/run")
        .join(names.prefix());
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    let share = work.join("share");
    fs::create_dir_all(&share)?;
    let _work_guard = cmd::RemoveOnDrop(vec![work.clone()]);
    let deb_name = deb
        .file_name()
        .and_then(|n| n.to_str())
        .context("the .deb has no file name")?;
    fs::copy(deb, share.join(deb_name)).context("copying the .deb for the container")?;

    // Keys: made with the host's wg.
    let genkey = || -> Result<String> {
        Ok(
            cmd::checked(&mut cmd::command::<&str>("wg", &["genkey"]), SHORT)?
                .trim()
                .to_owned(),
        )
    };
    let (c_priv, p_priv) = (genkey()?, genkey()?);
    let (c_pub, p_pub) = (cmd::wg_pubkey(&c_priv)?, cmd::wg_pubkey(&p_priv)?);

    // The kernel's WireGuard would take the interface away from wireguard-rs (wg-quick
    // prefers it): say so rather than report a misleading failure.
    let probe = names.name("k")?;
    if pns
        .ip(&["link", "add", &probe, "type", "wireguard"])
        .is_ok()
    {
        let _ = pns.ip(&["link", "del", &probe]);
        bail!(
            "this kernel has WireGuard, so wg-quick inside the container would use it instead \
             of wireguard-rs (the unit then refuses to run); run the test where the wireguard \
             module is absent (or blacklisted and not loaded)"
        );
    }

    // The peer: wireguard-go in the other namespace.
    let peer_if = names.name("p")?;
    let peer_log = work.join("wireguard-go.log");
    let mut wgo = pns.command("wireguard-go", &["-f", &peer_if]);
    wgo.env("LOG_LEVEL", "error");
    let mut peer = Background::spawn("wireguard-go", &mut wgo, Some(&peer_log))?;
    wait_for(&format!("/var/run/wireguard/{peer_if}.sock"), &mut peer)?;
    let p_key = work.join("peer.key");
    fs::write(&p_key, format!("{p_priv}\n"))?;
    pns.exec(
        "wg",
        &[
            "set",
            &peer_if,
            "private-key",
            p_key.to_str().context("non-UTF-8 path")?,
            "listen-port",
            &LISTEN_PORT.to_string(),
            "peer",
            &c_pub,
            "allowed-ips",
            &format!("{TUNNEL_C}/32"),
        ],
        SHORT,
    )?;
    pns.address_up(&peer_if, &format!("{TUNNEL_P}/24"))?;

    let log = work.join("container.log");
    let t = Instant::now();
    let booted = boot(root, cns, &share, &log);
    let mut container = match booted {
        Ok(c) => {
            push(
                checks,
                "container boots (systemd)",
                Ok(format!("{:.1} s", t.elapsed().as_secs_f64())),
            );
            c
        }
        Err(e) => {
            push(checks, "container boots (systemd)", Err(e));
            return Ok(());
        }
    };

    let result = container_checks(&container, deb_name, &c_priv, &p_pub, checks);
    if result.is_err() || checks.iter().any(|c| !c.ok) {
        let journal = container
            .sh(
                &format!("journalctl --no-pager -n 60 -u 'wireguard-rs@{IFACE}.service'"),
                SHORT,
            )
            .unwrap_or_default();
        println!("nspawn-test: the unit's journal:\n{journal}");
        println!("nspawn-test: wireguard-go: {}", peer.log_tail(10));
    }
    container.poweroff();
    drop(container);
    peer.stop(Duration::from_secs(3));
    drop(hosts);
    netns::report_leftovers(&names, "nspawn-test cleanup");
    result
}

/// Waits (10 s) for wireguard-go's UAPI socket.
fn wait_for(sock: &str, peer: &mut Background) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(sock).exists() {
        if let Some(status) = peer.poll_exit()? {
            bail!("wireguard-go exited ({status}): {}", peer.log_tail(10));
        }
        if Instant::now() > deadline {
            bail!("wireguard-go made no socket {sock} in 10 s");
        }
        cmd::sleep(Duration::from_millis(100))?;
    }
    Ok(())
}

fn push(checks: &mut Vec<Check>, name: &str, r: Result<String>) -> bool {
    let (ok, detail) = match r {
        Ok(d) => (true, d),
        Err(e) => (false, format!("{e:#}").replace('\n', " | ")),
    };
    println!(
        "nspawn-test: {} {name}: {detail}",
        if ok { "PASS" } else { "FAIL" }
    );
    checks.push(Check {
        name: name.to_owned(),
        ok,
        detail,
    });
    ok
}

/// The checks inside the booted container. Stops at the first failure that makes the rest
/// meaningless (install, start); records the others and goes on.
fn container_checks(
    ct: &Container,
    deb_name: &str,
    c_priv: &str,
    p_pub: &str,
    checks: &mut Vec<Check>,
) -> Result<()> {
    let unit = format!("wireguard-rs@{IFACE}.service");
    let installed = ct.sh(
        &format!(
            "dpkg -i /mnt/wgrs-test/{deb_name} >/tmp/dpkg.log 2>&1 || {{ cat /tmp/dpkg.log; \
                 exit 1; }}; dpkg-query -W -f '${{Package}} ${{Version}} ${{db:Status-Status}}' \
                 wireguard-rs"
        ),
        Duration::from_secs(120),
    );
    if !push(checks, "dpkg -i the .deb", installed) {
        return Ok(());
    }
    let users = ct.sh(
        "for u in wireguard-rs-keyd wireguard-rs-datad; do getent passwd $u || exit 1; done",
        SHORT,
    );
    push(
        checks,
        "users exist, no login shell",
        users.and_then(|text| {
            let shells: Vec<&str> = text.lines().filter_map(|l| l.rsplit(':').next()).collect();
            if shells.len() == 2
                && shells
                    .iter()
                    .all(|s| s.ends_with("nologin") || *s == "/bin/false")
            {
                Ok(shells.join(", "))
            } else {
                bail!("passwd entries: {}", text.trim())
            }
        }),
    );

    let conf = format!(
        "[Interface]\nPrivateKey = {c_priv}\nAddress = {TUNNEL_C}/24\nListenPort = \
         {LISTEN_PORT}\n\n[Peer]\nPublicKey = {p_pub}\nAllowedIPs = {TUNNEL_P}/32\nEndpoint = \
         {}:{LISTEN_PORT}\nPersistentKeepalive = 25\n",
        netns::UNDERLAY_B
    );
    ct.sh_stdin(
        &format!("umask 077 && mkdir -p /etc/wireguard && cat > /etc/wireguard/{IFACE}.conf"),
        conf.as_bytes(),
        SHORT,
    )?;
    let started = ct
        .sh(
            &format!("systemctl start {unit} 2>&1"),
            Duration::from_secs(60),
        )
        .and_then(|_| ct.sh(&format!("systemctl is-active {unit}"), SHORT))
        .map(|s| s.trim().to_owned());
    if !push(checks, "systemctl start wireguard-rs@wgt0", started) {
        let status = ct
            .sh(
                &format!("systemctl status --no-pager {unit} 2>&1; true"),
                SHORT,
            )
            .unwrap_or_default();
        println!("{status}");
        return Ok(());
    }
    let daemon = ct.sh(
        &format!("{DAEMONS}; test -S /run/wireguard/{IFACE}.sock && daemons"),
        SHORT,
    );
    push(
        checks,
        "daemon is wireguard-rs (UAPI socket)",
        daemon.and_then(|s| {
            if s.trim().is_empty() {
                bail!("no process named wireguard-rs")
            }
            Ok(format!("pid {}", s.trim()))
        }),
    );
    push(
        checks,
        "interface has the address",
        ct.sh(&format!("ip -o -4 addr show dev {IFACE}"), SHORT)
            .and_then(|s| {
                if s.contains(&format!("{TUNNEL_C}/24")) {
                    Ok(format!("{TUNNEL_C}/24"))
                } else {
                    bail!("no {TUNNEL_C}/24: {}", s.trim())
                }
            }),
    );
    push(
        checks,
        "ping through the tunnel",
        ct.sh(
            &format!("ping -n -c 3 -i 0.3 -w 15 {TUNNEL_P} | tail -2"),
            Duration::from_secs(25),
        )
        .map(|s| tail(&s, 2).replace('\n', "; ")),
    );
    push(
        checks,
        "wg show: a handshake",
        ct.sh(&format!("wg show {IFACE} latest-handshakes"), SHORT)
            .and_then(|s| {
                let t: u64 = s
                    .split_whitespace()
                    .nth(1)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                if t > 0 {
                    Ok(format!("latest handshake at {t}"))
                } else {
                    bail!("no handshake: {}", s.trim())
                }
            }),
    );
    push(
        checks,
        "/run/wireguard is 0700 root",
        ct.sh("stat -c '%a %U:%G' /run/wireguard", SHORT)
            .and_then(|s| expect(&s, "700 root:root")),
    );
    push(
        checks,
        "UAPI socket is 0600",
        ct.sh(
            &format!("stat -c '%a %U %F' /run/wireguard/{IFACE}.sock"),
            SHORT,
        )
        .and_then(|s| expect(&s, "600 root socket")),
    );
    let stopped = ct
        .sh(&format!("systemctl stop {unit}"), Duration::from_secs(60))
        .and_then(|_| {
            let active = ct.sh(&format!("systemctl is-active {unit} || true"), SHORT)?;
            let failed = ct.sh(&format!("systemctl is-failed {unit} || true"), SHORT)?;
            let (active, failed) = (active.trim().to_owned(), failed.trim().to_owned());
            if active == "inactive" && failed != "failed" {
                Ok(format!("is-active {active}, is-failed {failed}"))
            } else {
                bail!("is-active {active}, is-failed {failed}")
            }
        });
    push(checks, "systemctl stop: inactive, not failed", stopped);
    push(
        checks,
        "interface gone, daemon gone",
        ct.sh(
            &format!(
                "{DAEMONS}; for i in $(seq 50); do \
                 if ! ip link show {IFACE} >/dev/null 2>&1 && [ -z \"$(daemons)\" ]; then \
                 echo gone; exit 0; fi; sleep 0.1; done; ip -o link show {IFACE}; daemons; exit 1"
            ),
            SHORT,
        )
        .map(|s| s.trim().to_owned()),
    );
    push(
        checks,
        "dpkg --purge; users kept",
        ct.sh(
            "dpkg --purge wireguard-rs >/dev/null && ! test -e /usr/lib/systemd/system/wireguard-rs@.service \
             && getent passwd wireguard-rs-keyd >/dev/null && echo purged",
            Duration::from_secs(60),
        )
        .map(|s| s.trim().to_owned()),
    );
    Ok(())
}

fn expect(got: &str, want: &str) -> Result<String> {
    if got.trim() == want {
        Ok(want.to_owned())
    } else {
        bail!("{}, want {want}", got.trim())
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
