//! `cargo xtask demo`: two network namespaces, a WireGuard tunnel between them made by a
//! userspace daemon, a ping and an iperf3 throughput figure, then a full cleanup.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, Background};
use crate::netbench::impls::quote;
use crate::netns::{self, Namespace, RunNames, TwoHosts};
use wg_netns::private_dir::PrivateDir;

/// Name tag of the demo's namespaces and interfaces (`wgrsd<pid>a`, `wgrsd<pid>wa`, …).
pub(crate) const TAG: &str = "wgrsd";
/// Where WireGuard userspace implementations put their UAPI sockets (shared by all
/// namespaces, since it is a filesystem path).
const SOCKET_DIR: &str = "/var/run/wireguard";
/// How long a daemon gets to create its UAPI socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);
/// UDP port both ends listen on (each in its own namespace).
const LISTEN_PORT: u16 = 51820;
/// Tunnel addresses of A and B.
const TUNNEL_A: &str = "10.204.0.1";
const TUNNEL_B: &str = "10.204.0.2";
const IPERF_PORT: &str = "5201";
/// Bound for short commands (`wg`, `ip`).
const SHORT: Duration = Duration::from_secs(10);
/// The daemon command when `--impl` is not given.
const DEFAULT_TEMPLATE: &str = "{bin} -f {if}";
/// Bound for building the daemon.
const BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// Arguments of `cargo xtask demo`.
pub(crate) struct DemoArgs {
    /// Command template run in each namespace; `{bin}` and `{if}` are substituted.
    pub(crate) impl_template: Option<String>,
    /// iperf3 duration in seconds.
    pub(crate) seconds: u32,
}

/// Why a finished demo exits non-zero without an `Err`.
enum Outcome {
    Ok,
    NoDaemon,
    TunnelPingFailed,
}

/// Runs the demo.
pub(crate) fn run(args: &DemoArgs) -> Result<ExitCode> {
    if !cmd::is_root() {
        bail!(
            "cargo xtask demo must run as root: it creates network namespaces and TUN \
             interfaces. Run it as root (e.g. `sudo -E cargo xtask demo`)"
        );
    }
    if args.seconds == 0 || args.seconds > 600 {
        bail!("--seconds must be between 1 and 600 (got {})", args.seconds);
    }
    cmd::require_tools(&["ip", "ping", "wg", "iperf3", "ss"])?;
    netns::warn_stale(&[TAG, crate::selftest::TAG]);

    // Decide the daemon before making namespaces: a release build can take minutes.
    let template = args
        .impl_template
        .clone()
        .unwrap_or_else(|| DEFAULT_TEMPLATE.to_owned());
    if !template.contains("{if}") {
        bail!(
            "--impl template {template:?} must contain {{if}} (the interface name), e.g. \
             'wireguard-go -f {{if}}'"
        );
    }
    let template = if template.contains("{bin}") {
        match build_daemon()? {
            Some(bin) => Some(template.replace("{bin}", &quote(&bin.to_string_lossy()))),
            None if args.impl_template.is_some() => bail!(
                "--impl uses {{bin}}, but the workspace has no `wireguard-rs` package yet; name \
                 a program instead, e.g. --impl 'wireguard-go -f {{if}}'"
            ),
            None => None,
        }
    } else {
        Some(template)
    };

    let names = RunNames::new(TAG)?;
    let result = with_names(&names, template.as_deref(), args.seconds);
    // Every guard inside `with_names` has been dropped by now: verify.
    netns::report_leftovers(&names, "demo");
    match result? {
        Outcome::Ok => Ok(ExitCode::SUCCESS),
        Outcome::NoDaemon => {
            println!(
                "the wireguard-rs daemon is not built yet (it lands with the daemon issue); the \
                 namespace plumbing works: underlay ping OK. Try `cargo xtask demo --impl \
                 'wireguard-go -f {{if}}'` to see the demo with wireguard-go"
            );
            Ok(ExitCode::from(2))
        }
        Outcome::TunnelPingFailed => {
            eprintln!("demo FAILED: no ping reply through the tunnel (see `wg show` above)");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Builds `wireguard-rs` in release mode and returns its path, or `None` if the
/// workspace has no `wireguard-rs` package yet.
fn build_daemon() -> Result<Option<PathBuf>> {
    let root = cmd::workspace_root();
    let mut c = cmd::command(
        &cmd::cargo(),
        &["metadata", "--format-version", "1", "--no-deps"],
    );
    c.current_dir(&root);
    let meta = cmd::checked(&mut c, Duration::from_secs(120))?;
    let meta: serde_json::Value =
        serde_json::from_str(&meta).context("`cargo metadata` printed invalid JSON")?;
    let has_daemon = meta["packages"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["name"] == "wireguard-rs"));
    if !has_daemon {
        return Ok(None);
    }
    let target = meta["target_directory"]
        .as_str()
        .map_or_else(|| root.join("target"), PathBuf::from);
    println!(
        "demo: building the daemon: cargo build --release -p wireguard-rs -p wireguard-rs-keyd -p wireguard-rs-datad"
    );
    let mut c = cmd::command(
        &cmd::cargo(),
        &[
            "build",
            "--release",
            "-p",
            "wireguard-rs",
            "-p",
            "wireguard-rs-keyd",
            "-p",
            "wireguard-rs-datad",
        ],
    );
    c.current_dir(&root);
    let status = cmd::status_inherit(&mut c, BUILD_TIMEOUT)?;
    if !status.success() {
        bail!("building the release daemon failed ({status}); fix the build first");
    }
    let bin = target.join("release").join("wireguard-rs");
    if !bin.is_file() {
        bail!("built wireguard-rs but {} does not exist", bin.display());
    }
    Ok(Some(bin))
}

/// Prefixes a simple command with `exec`, so the shell is replaced by the daemon and the
/// PID we started is the daemon's own; a template with shell syntax is left alone.
fn exec_simple(line: &str) -> String {
    let simple = !line.contains(|c: char| ";&|<>()$`\n".contains(c))
        && line
            .split_whitespace()
            .next()
            .is_some_and(|first| !first.contains('=') && first != "exec");
    if simple {
        format!("exec {line}")
    } else {
        line.to_owned()
    }
}

/// One tunnel end.
struct End<'a> {
    ns: &'a Namespace,
    ifname: String,
    tunnel_ip: &'static str,
    underlay_ip: &'static str,
}

fn with_names(names: &RunNames, template: Option<&str>, seconds: u32) -> Result<Outcome> {
    println!(
        "demo: namespaces {0}a and {0}b, veth {0}va/{0}vb, underlay {1}/24 <-> {2}/24",
        names.prefix(),
        netns::UNDERLAY_A,
        netns::UNDERLAY_B
    );
    let hosts = TwoHosts::create(names)?;
    println!(
        "demo: underlay ping {} -> {}: OK",
        netns::UNDERLAY_A,
        netns::UNDERLAY_B
    );
    let Some(template) = template else {
        return Ok(Outcome::NoDaemon);
    };

    let dir = PrivateDir::create(names.prefix())?;
    let a = End {
        ns: &hosts.a,
        ifname: names.name("wa")?,
        tunnel_ip: TUNNEL_A,
        underlay_ip: netns::UNDERLAY_A,
    };
    let b = End {
        ns: &hosts.b,
        ifname: names.name("wb")?,
        tunnel_ip: TUNNEL_B,
        underlay_ip: netns::UNDERLAY_B,
    };
    let sockets = cmd::RemoveOnDrop(
        [&a, &b]
            .iter()
            .map(|e| Path::new(SOCKET_DIR).join(format!("{}.sock", e.ifname)))
            .collect(),
    );
    for s in &sockets.0 {
        if s.exists() {
            eprintln!(
                "demo: removing stale socket {} (from a crashed run)",
                s.display()
            );
            fs::remove_file(s).with_context(|| format!("could not remove {}", s.display()))?;
        }
    }

    // Daemons: declared after `sockets` and `dir`, so they are stopped before those go.
    let mut daemons = Vec::new();
    for (end, sock) in [&a, &b].into_iter().zip(&sockets.0) {
        let line = exec_simple(&template.replace("{if}", &end.ifname));
        println!("demo: [{}] starting: {line}", end.ns.name());
        let log = dir.path().join(format!("{}.log", end.ifname));
        let mut c = end.ns.command("sh", &["-c", &line]);
        let mut d = Background::spawn(&format!("daemon for {}", end.ifname), &mut c, Some(&log))?;
        wait_for_socket(&mut d, sock)?;
        println!(
            "demo: [{}] daemon pid {} is up: {}",
            end.ns.name(),
            d.pid(),
            sock.display()
        );
        daemons.push(d);
    }

    // Keys and configuration.
    let mut pubkeys = Vec::new();
    let mut keyfiles = Vec::new();
    for end in [&a, &b] {
        let private = cmd::checked(&mut cmd::command::<&str>("wg", &["genkey"]), SHORT)?;
        keyfiles.push(dir.write_secret(&format!("{}.key", end.ifname), &private)?);
        pubkeys.push(cmd::wg_pubkey(&private)?);
    }
    let port = LISTEN_PORT.to_string();
    for (i, (end, peer)) in [(&a, &b), (&b, &a)].into_iter().enumerate() {
        let key = keyfiles[i].to_string_lossy().into_owned();
        let peer_pub = &pubkeys[1 - i];
        let allowed = format!("{}/32", peer.tunnel_ip);
        let endpoint = format!("{}:{port}", peer.underlay_ip);
        end.ns.exec(
            "wg",
            &[
                "set",
                &end.ifname,
                "private-key",
                &key,
                "listen-port",
                &port,
                "peer",
                peer_pub,
                "allowed-ips",
                &allowed,
                "endpoint",
                &endpoint,
            ],
            SHORT,
        )?;
        end.ns
            .ip(&["link", "set", &end.ifname, "mtu", "1420", "up"])?;
        end.ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", end.tunnel_ip),
            "dev",
            &end.ifname,
        ])?;
        println!(
            "demo: [{}] {} = {}/24, listening on {}:{port}, peer endpoint {endpoint}",
            end.ns.name(),
            end.ifname,
            end.tunnel_ip,
            end.underlay_ip
        );
    }
    // The key files have been read by the daemons: remove them now, not only at exit.
    for k in &keyfiles {
        let _ = fs::remove_file(k);
    }

    // Ping through the tunnel (the first packet triggers the handshake).
    let stats = a.ns.ping(TUNNEL_B, 5, 2)?;
    println!("demo: tunnel ping {TUNNEL_A} -> {TUNNEL_B}: {stats}");
    if !stats.ok() {
        show(&a, &b);
        for d in &daemons {
            eprintln!("demo: daemon log (pid {}):\n{}", d.pid(), d.log_tail(20));
        }
        return Ok(Outcome::TunnelPingFailed);
    }

    let iperf = throughput(&a, &b, &dir, seconds);
    show(&a, &b);
    let (received, sent, retransmits) = iperf?;
    println!(
        "demo: throughput {TUNNEL_A} -> {TUNNEL_B} (iperf3 TCP, {seconds} s): {:.1} Mbit/s \
         received ({:.1} Mbit/s sent{})",
        received / 1e6,
        sent / 1e6,
        retransmits
            .map(|r| format!(", {r} retransmits"))
            .unwrap_or_default()
    );
    println!(
        "demo: OK: ping avg {} ms, {:.1} Mbit/s",
        stats
            .avg_rtt_ms
            .map_or_else(|| "?".to_owned(), |v| format!("{v:.3}")),
        received / 1e6
    );
    drop(daemons);
    Ok(Outcome::Ok)
}

/// Waits until the daemon created its UAPI socket, failing early if it exits first.
fn wait_for_socket(d: &mut Background, sock: &Path) -> Result<()> {
    let start = Instant::now();
    loop {
        if sock.exists() {
            if let Some(status) = d.poll_exit()? {
                eprintln!(
                    "demo: warning: the daemon process exited ({status}) after creating {}: it \
                     daemonized, so this command cannot stop it by PID; use its foreground flag \
                     (e.g. -f)",
                    sock.display()
                );
            }
            return Ok(());
        }
        if let Some(status) = d.poll_exit()? {
            bail!(
                "the daemon exited ({status}) before creating {}; its output:\n{}",
                sock.display(),
                d.log_tail(20)
            );
        }
        if start.elapsed() >= SOCKET_WAIT {
            bail!(
                "the daemon (pid {}) did not create {} within {} s; its output:\n{}",
                d.pid(),
                sock.display(),
                SOCKET_WAIT.as_secs(),
                d.log_tail(20)
            );
        }
        cmd::sleep(Duration::from_millis(50))?;
    }
}

/// iperf3 from A to B; returns (received bit/s, sent bit/s, retransmits).
fn throughput(
    a: &End<'_>,
    b: &End<'_>,
    dir: &PrivateDir,
    seconds: u32,
) -> Result<(f64, f64, Option<u64>)> {
    let log = dir.path().join("iperf3-server.log");
    let mut server = Background::spawn(
        "iperf3 server",
        &mut b
            .ns
            .command("iperf3", &["-s", "-1", "-B", b.tunnel_ip, "-p", IPERF_PORT]),
        Some(&log),
    )?;
    // Wait (bounded) until it listens.
    let filter = format!("sport = :{IPERF_PORT}");
    let start = Instant::now();
    loop {
        let listening = b.ns.exec("ss", &["-Hltn", &filter], SHORT)?;
        if !listening.trim().is_empty() {
            break;
        }
        if let Some(status) = server.poll_exit()? {
            bail!("iperf3 server exited ({status}): {}", server.log_tail(10));
        }
        if start.elapsed() > Duration::from_secs(5) {
            bail!("iperf3 server did not listen on port {IPERF_PORT} within 5 s");
        }
        cmd::sleep(Duration::from_millis(50))?;
    }
    let secs = seconds.to_string();
    let mut c = a.ns.command(
        "iperf3",
        &["-c", b.tunnel_ip, "-p", IPERF_PORT, "-t", &secs, "-J"],
    );
    let out = cmd::output(&mut c, Duration::from_secs(u64::from(seconds) + 30))?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 client printed no JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(err) = json["error"].as_str() {
        bail!("iperf3 failed: {err}");
    }
    cmd::ensure_success(&c, &out)?;
    let end = &json["end"];
    let received = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    let sent = end["sum_sent"]["bits_per_second"]
        .as_f64()
        .unwrap_or(received);
    let retransmits = end["sum_sent"]["retransmits"].as_u64();
    // `-s -1` exits after one test; give it a moment, then the guard kills it.
    let _ = server.wait_exit(Duration::from_secs(3));
    Ok((received, sent, retransmits))
}

/// Prints `wg show` for both ends (best effort: this is diagnostics).
fn show(a: &End<'_>, b: &End<'_>) {
    if cmd::interrupted() {
        return;
    }
    for end in [a, b] {
        match end.ns.exec("wg", &["show", &end.ifname], SHORT) {
            Ok(text) => println!(
                "--- [{}] wg show {}\n{}",
                end.ns.name(),
                end.ifname,
                text.trim_end()
            ),
            Err(e) => eprintln!("--- [{}] wg show {}: {e:#}", end.ns.name(), end.ifname),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_only_for_simple_commands() {
        assert_eq!(
            exec_simple("wireguard-go -f wg0"),
            "exec wireguard-go -f wg0"
        );
        assert_eq!(
            exec_simple("exec wireguard-go -f wg0"),
            "exec wireguard-go -f wg0"
        );
        assert_eq!(
            exec_simple("A=1 wireguard-go -f wg0"),
            "A=1 wireguard-go -f wg0"
        );
        assert_eq!(exec_simple("a; b"), "a; b");
        assert_eq!(exec_simple("a 2>/tmp/x"), "a 2>/tmp/x");
    }
}
