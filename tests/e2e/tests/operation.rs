//! Operating the daemon as an administrator, wg-quick or systemd does: the background
//! start reports success only once `wg show` works and every start-up failure with a
//! message and a non-zero status; a stop signal to the whole process group is a clean
//! stop; systemd's `READY=1`/`STOPPING=1`; a listen port below 1024 by default; errors that
//! name a missing capability; `LOG_LEVEL` and log lines naming the interface; the
//! `WG_RS_*` variables; `--version` of the three binaries.
// Linux only: network namespaces and the Linux daemon.
#![cfg(target_os = "linux")]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use wg_e2e::daemon::{find_processes, socket_path};
use wg_e2e::env::SHORT;
use wg_e2e::{Daemon, Env, Namespace, cmd, link_exists, setup, wait_until};

/// A daemon that put itself in the background (so not our child): on drop, every
/// wireguard-rs process serving its (unique) interface is stopped by PID and the socket
/// file removed.
struct Backgrounded {
    bin: PathBuf,
    ifname: String,
}

impl Backgrounded {
    fn monitors(&self) -> Vec<u32> {
        find_processes(&self.bin, &self.ifname)
    }
}

impl Drop for Backgrounded {
    fn drop(&mut self) {
        for sig in [Signal::SIGTERM, Signal::SIGKILL] {
            for pid in self.monitors() {
                let _ = kill(pid_of(pid), sig);
            }
            if wait_until(Duration::from_secs(3), || self.monitors().is_empty()) {
                break;
            }
        }
        let _ = std::fs::remove_file(socket_path(&self.ifname));
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// `wireguard-rs ARGS…` in `ns` without `-f`, with `vars` set and `LOG_LEVEL` unset unless
/// given; returns its output (bounded).
fn run_rs(env: &Env, ns: &Namespace, args: &[&str], vars: &[(&str, &str)]) -> Result<Output> {
    let mut c = ns.command(&env.rs_bin().to_string_lossy(), args);
    c.env_remove("LOG_LEVEL").env_remove("NOTIFY_SOCKET");
    c.envs(vars.iter().copied());
    cmd::output(&mut c, Duration::from_secs(40))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

/// The command failed with status 1 and one error line mentioning every word of
/// `mention`, and left neither interface nor socket behind.
fn ensure_refused(
    what: &str,
    out: &Output,
    ns: &Namespace,
    ifname: &str,
    mention: &[&str],
) -> Result<String> {
    let err = stderr(out);
    ensure!(
        out.status.code() == Some(1),
        "{what}: exited with {}, want 1; stderr:\n{err}",
        out.status
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(
        lines.len() == 1,
        "{what}: want one error line, got {}:\n{err}",
        lines.len()
    );
    for word in mention {
        ensure!(
            lines[0].contains(word),
            "{what}: the error does not mention {word:?}: {}",
            lines[0]
        );
    }
    ensure!(
        wait_until(Duration::from_secs(3), || !link_exists(ns, ifname)
            && !socket_path(ifname).exists()),
        "{what}: left interface {ifname} (exists: {}) or its socket (exists: {})",
        link_exists(ns, ifname),
        socket_path(ifname).exists()
    );
    println!("{what}: {}", lines[0]);
    Ok(lines[0].to_owned())
}

/// A libexec directory of the test's own, removed on drop.
struct LibexecDir(PathBuf);

impl Drop for LibexecDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A directory holding a `wireguard-rs-keyd` that fails at once (exit status 3, with a
/// line on stderr) and the real `wireguard-rs-datad`. World-readable and outside the
/// test's private directory, so the spawner (the data plane's user) can start datad.
fn broken_keyd_dir(env: &Env) -> Result<LibexecDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = LibexecDir(std::env::temp_dir().join(format!("{}-libexec", env.name("")?)));
    std::fs::create_dir_all(&dir.0)?;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755))?;
    let keyd = dir.0.join("wireguard-rs-keyd");
    std::fs::write(
        &keyd,
        "#!/bin/sh\necho 'fake keyd: refusing to start' >&2\nexit 3\n",
    )?;
    std::fs::set_permissions(&keyd, std::fs::Permissions::from_mode(0o755))?;
    let datad = dir.0.join("wireguard-rs-datad");
    if !datad.exists() {
        std::os::unix::fs::symlink(env.rs_dir.join("wireguard-rs-datad"), &datad)?;
    }
    Ok(dir)
}

/// A directory the data plane's user cannot enter (in the test's private directory,
/// mode 0700) holding the real binaries: root starts keyd, the spawner cannot start datad.
fn private_libexec_dir(env: &Env) -> Result<PathBuf> {
    let dir = env.dir.path().join("private-libexec");
    std::fs::create_dir_all(&dir)?;
    for bin in ["wireguard-rs-keyd", "wireguard-rs-datad"] {
        let link = dir.join(bin);
        if !link.exists() {
            std::os::unix::fs::symlink(env.rs_dir.join(bin), &link)?;
        }
    }
    Ok(dir)
}

#[test]
fn background_start_failures_exit_nonzero_with_the_message() -> Result<()> {
    let env = setup!("bf");
    let ns = Namespace::create(&env.name("n")?)?;
    let ifname = env.name("w")?;
    let _guard = Backgrounded {
        bin: env.rs_bin(),
        ifname: ifname.clone(),
    };
    // Found before the background start.
    let out = run_rs(&env, &ns, &["--libexec-dir", "/nonexistent", &ifname], &[])?;
    ensure_refused(
        "--libexec-dir /nonexistent",
        &out,
        &ns,
        &ifname,
        &["wireguard-rs-keyd", "/nonexistent", "--libexec-dir"],
    )?;
    // The same through the environment, as wg-quick would pass it.
    let out = run_rs(
        &env,
        &ns,
        &[&ifname],
        &[("WG_RS_LIBEXEC_DIR", "/nonexistent")],
    )?;
    ensure_refused(
        "WG_RS_LIBEXEC_DIR=/nonexistent",
        &out,
        &ns,
        &ifname,
        &["/nonexistent"],
    )?;
    let out = run_rs(
        &env,
        &ns,
        &[&ifname],
        &[("WG_RS_KEYD_USER", "wg-rs-no-such-user")],
    )?;
    ensure_refused(
        "WG_RS_KEYD_USER=wg-rs-no-such-user",
        &out,
        &ns,
        &ifname,
        &["wg-rs-no-such-user", "does not exist"],
    )?;
    // Found by the background process (its key process dies): told over the readiness
    // pipe and printed by the command.
    let dir = broken_keyd_dir(&env)?;
    let out = run_rs(
        &env,
        &ns,
        &["--libexec-dir", &dir.0.to_string_lossy(), &ifname],
        &[],
    )?;
    ensure_refused(
        "a key process that exits at once",
        &out,
        &ns,
        &ifname,
        &["key process", "exit status 3"],
    )?;
    // Found by the spawner, which reports it to the monitor.
    let dir = private_libexec_dir(&env)?;
    let out = run_rs(
        &env,
        &ns,
        &["--libexec-dir", &dir.to_string_lossy(), &ifname],
        &[],
    )?;
    ensure_refused(
        "a data plane the spawner cannot start",
        &out,
        &ns,
        &ifname,
        &["wireguard-rs-datad", "Permission denied"],
    )?;
    ensure!(
        find_processes(&env.rs_bin(), &ifname).is_empty(),
        "a wireguard-rs process for {ifname} is left"
    );
    Ok(())
}

#[test]
fn background_start_returns_once_wg_show_works() -> Result<()> {
    let env = setup!("bs");
    let ns = Namespace::create(&env.name("n")?)?;
    let ifname = env.name("w")?;
    let guard = Backgrounded {
        bin: env.rs_bin(),
        ifname: ifname.clone(),
    };
    let started = std::time::Instant::now();
    let out = run_rs(&env, &ns, &[&ifname], &[])?;
    let took = started.elapsed();
    ensure!(
        out.status.success() && stderr(&out).is_empty(),
        "background start: {}; stderr:\n{}",
        out.status,
        stderr(&out)
    );
    // At once, without waiting: the command returned only once this works.
    let show = cmd::output(&mut ns.command("wg", &["show", &ifname, "dump"]), SHORT)?;
    ensure!(
        show.status.success(),
        "`wg show` right after the background start returned: {}",
        stderr(&show)
    );
    let monitors = guard.monitors();
    ensure!(
        monitors.len() == 1,
        "monitors serving {ifname}: {monitors:?}"
    );
    println!(
        "background start returned after {} ms; `wg show` answered at once",
        took.as_millis()
    );
    // Deleting the interface stops it, with nothing left.
    ns.ip(&["link", "del", &ifname])?;
    ensure!(
        wait_until(Duration::from_secs(5), || guard.monitors().is_empty()
            && !socket_path(&ifname).exists()),
        "5 s after `ip link del`: monitors {:?}, socket exists: {}",
        guard.monitors(),
        socket_path(&ifname).exists()
    );
    Ok(())
}

/// Every line of a log that reports an error (tracing's `ERROR` level or a final
/// `wireguard-rs…: ` error line).
fn error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" ERROR ") || l.contains("failed") || l.contains("exited ("))
        .collect()
}

/// Waits for every process in `tree` to be gone.
fn all_gone(tree: &[u32]) -> bool {
    wait_until(Duration::from_secs(5), || {
        tree.iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
    })
}

#[test]
fn stop_signals_to_the_group_or_the_monitor_exit_0_and_leave_nothing() -> Result<()> {
    let env = setup!("sg");
    let ns = Namespace::create(&env.name("n")?)?;
    for (round, (signal, to_group)) in [
        (Signal::SIGTERM, true),
        (Signal::SIGINT, true),
        (Signal::SIGTERM, false),
        (Signal::SIGHUP, false),
    ]
    .into_iter()
    .enumerate()
    {
        let ifname = env.name(&format!("w{round}"))?;
        let mut d = Daemon::start(&env, &ns, wg_e2e::Impl::Rs, &ifname)?;
        // The socket answers before the data plane is up: wait for all four.
        wait_until(Duration::from_secs(5), || d.process_tree().len() >= 4);
        let tree = d.process_tree();
        ensure!(
            tree.len() >= 4,
            "want monitor, keyd, spawner, datad: {tree:?}"
        );
        let pid = pid_of(d.pid());
        if to_group {
            killpg(pid, signal)?;
        } else {
            kill(pid, signal)?;
        }
        let what = format!(
            "{signal} to the {}",
            if to_group { "process group" } else { "monitor" }
        );
        let status = d
            .wait_exit(Duration::from_secs(5))?
            .with_context(|| format!("{what}: no exit within 5 s; log:\n{}", d.log_tail(20)))?;
        let log = d.log();
        ensure!(
            status.success(),
            "{what}: exited with {status}; log:\n{log}"
        );
        let errors = error_lines(&log);
        ensure!(
            errors.is_empty(),
            "{what}: error lines:\n{}",
            errors.join("\n")
        );
        ensure!(all_gone(&tree), "{what}: processes left of {tree:?}");
        ensure!(
            !link_exists(&ns, &ifname) && !d.socket().exists(),
            "{what}: interface (exists: {}) or socket (exists: {}) left",
            link_exists(&ns, &ifname),
            d.socket().exists()
        );
        println!(
            "{what}: exit {status}, {} processes gone, no error line",
            tree.len()
        );
    }
    // A real failure is not a clean stop: keyd killed → non-zero.
    let mut d = Daemon::start(&env, &ns, wg_e2e::Impl::Rs, &env.name("wk")?)?;
    let keyd = d
        .process_tree()
        .into_iter()
        .find(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .is_ok_and(|e| e.ends_with("wireguard-rs-keyd"))
        })
        .context("no keyd process")?;
    kill(pid_of(keyd), Signal::SIGKILL)?;
    let status = d
        .wait_exit(Duration::from_secs(5))?
        .context("no exit within 5 s of keyd's death")?;
    ensure!(
        !status.success(),
        "exited with {status} after keyd was killed; log:\n{}",
        d.log_tail(20)
    );
    Ok(())
}

/// Receives one notification (bounded).
fn recv_notification(socket: &UnixDatagram, timeout: Duration) -> Result<String> {
    socket.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .context("no notification on the fake NOTIFY_SOCKET")?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn systemd_notify_ready_and_stopping() -> Result<()> {
    let env = setup!("sn");
    let ns = Namespace::create(&env.name("n")?)?;
    let path = env.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path)?;
    let path_text = path.to_string_lossy().into_owned();

    // Foreground (Type=notify with -f): the monitor itself says READY=1, then STOPPING=1.
    let ifname = env.name("wf")?;
    let mut d = Daemon::start_rs_with(
        &env,
        &ns,
        &ifname,
        &env.rs_dir,
        &[("NOTIFY_SOCKET", &path_text)],
        false,
    )?;
    let ready = recv_notification(&socket, Duration::from_secs(15))?;
    ensure!(
        ready.lines().any(|l| l == "READY=1")
            && ready
                .lines()
                .any(|l| l.starts_with("STATUS=") && l.contains(&ifname))
            && !ready.contains("MAINPID="),
        "foreground: first notification {ready:?}"
    );
    // READY=1 means `wg show` works.
    d.dump().context("`wg show` right after READY=1")?;
    killpg(pid_of(d.pid()), Signal::SIGTERM)?;
    let stopping = recv_notification(&socket, Duration::from_secs(5))?;
    ensure!(
        stopping.lines().any(|l| l == "STOPPING=1"),
        "foreground: notification after SIGTERM {stopping:?}"
    );
    let status = d.wait_exit(Duration::from_secs(5))?.context("no exit")?;
    ensure!(status.success(), "foreground: exited with {status}");
    println!("foreground: {ready:?} then {stopping:?}");

    // Background: the command (systemd's main process) says READY=1 with MAINPID= the
    // monitor that stays.
    let ifname = env.name("wb")?;
    let guard = Backgrounded {
        bin: env.rs_bin(),
        ifname: ifname.clone(),
    };
    let out = run_rs(&env, &ns, &[&ifname], &[("NOTIFY_SOCKET", &path_text)])?;
    ensure!(
        out.status.success(),
        "background: {}: {}",
        out.status,
        stderr(&out)
    );
    let ready = recv_notification(&socket, Duration::from_secs(5))?;
    let main_pid: u32 = ready
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .with_context(|| format!("background: no MAINPID in {ready:?}"))?
        .parse()?;
    ensure!(
        ready.lines().any(|l| l == "READY=1") && guard.monitors() == vec![main_pid],
        "background: {ready:?}, but the monitors are {:?}",
        guard.monitors()
    );
    kill(pid_of(main_pid), Signal::SIGTERM)?;
    let stopping = recv_notification(&socket, Duration::from_secs(5))?;
    ensure!(
        stopping.lines().any(|l| l == "STOPPING=1"),
        "background: notification after SIGTERM {stopping:?}"
    );
    ensure!(
        wait_until(Duration::from_secs(5), || guard.monitors().is_empty()),
        "background: the monitor did not stop"
    );
    println!("background: {ready:?} then {stopping:?}");
    Ok(())
}

#[test]
fn a_listen_port_below_1024_works_by_default() -> Result<()> {
    let env = setup!("lp");
    let ns = Namespace::create(&env.name("n")?)?;
    let d = Daemon::start(&env, &ns, wg_e2e::Impl::Rs, &env.name("w")?)?;
    // As wg-quick does for `ListenPort = 443`.
    d.set(&["listen-port", "443"])?;
    let port = d.dump()?.listen_port;
    ensure!(
        port == 443,
        "listen port {port} after `wg set … listen-port 443`"
    );

    // Turned off (here through the environment): refused, and the log names the
    // capability.
    let ifname = env.name("wn")?;
    let d = Daemon::start_rs_with(
        &env,
        &ns,
        &ifname,
        &env.rs_dir,
        &[("WG_RS_NO_LOW_PORTS", "1")],
        true,
    )?;
    let out = d.wg_output(&["set", &ifname, "listen-port", "443"])?;
    ensure!(
        !out.status.success(),
        "with WG_RS_NO_LOW_PORTS=1, listen-port 443 was accepted"
    );
    // wg prints the errno keyd answered: the missing privilege, not "Address already in use".
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        said.contains("Permission denied"),
        "wg was told something else than the missing privilege: {said}"
    );
    ensure!(
        wait_until(Duration::from_secs(2), || d
            .log()
            .contains("need CAP_NET_BIND_SERVICE")),
        "the refusal does not name CAP_NET_BIND_SERVICE; log:\n{}",
        d.log_tail(10)
    );
    ensure!(d.dump()?.listen_port != 443, "port 443 in use anyway");
    println!(
        "port 443 by default: yes; with WG_RS_NO_LOW_PORTS=1: refused, log names the capability"
    );
    Ok(())
}

#[test]
fn capability_errors_name_the_capability() -> Result<()> {
    let env = setup!("ce");
    let ns = Namespace::create(&env.name("n")?)?;
    let bin = env.rs_bin().to_string_lossy().into_owned();
    let ifname = env.name("w")?;
    let _guard = Backgrounded {
        bin: env.rs_bin(),
        ifname: ifname.clone(),
    };
    let mut cases: Vec<(&str, Vec<String>, &str)> = Vec::new();
    if cmd::on_path("capsh") {
        cases.push((
            "capsh --drop=cap_setpcap",
            vec![
                "capsh".into(),
                "--drop=cap_setpcap".into(),
                "--".into(),
                "-c".into(),
                format!("exec {bin} {ifname}"),
            ],
            "CAP_SETPCAP",
        ));
    }
    if cmd::on_path("setpriv") {
        for (drop, cap) in [
            ("-setuid,-setgid", "CAP_SETUID"),
            ("-sys_chroot", "CAP_SYS_CHROOT"),
            ("-net_admin", "CAP_NET_ADMIN"),
        ] {
            cases.push((
                "setpriv --bounding-set",
                vec![
                    "setpriv".into(),
                    "--bounding-set".into(),
                    drop.into(),
                    "--".into(),
                    bin.clone(),
                    "-f".into(),
                    ifname.clone(),
                ],
                cap,
            ));
        }
    }
    if cases.len() < 2 {
        bail!("neither capsh nor setpriv is installed (apt-get install libcap2-bin util-linux)");
    }
    for (what, argv, cap) in cases {
        let mut c = ns.command(&argv[0], &argv[1..]);
        c.env_remove("LOG_LEVEL");
        let out = cmd::output(&mut c, Duration::from_secs(30))?;
        ensure_refused(&format!("{what} ({cap})"), &out, &ns, &ifname, &[cap])?;
    }
    Ok(())
}

#[test]
fn log_level_values_and_lines_naming_the_interface() -> Result<()> {
    let env = setup!("ll");
    let ns = Namespace::create(&env.name("n")?)?;
    // Unknown: one warning naming the accepted values, then the default level (warn: no
    // info lines).
    let ifname = env.name("wu")?;
    let d = Daemon::start_rs_with(
        &env,
        &ns,
        &ifname,
        &env.rs_dir,
        &[("LOG_LEVEL", "loud")],
        true,
    )?;
    let log = d.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("LOG_LEVEL")).collect();
    ensure!(
        warnings.len() == 1
            && warnings[0].contains("silent, error, warn, info, verbose")
            && warnings[0].contains("trace"),
        "LOG_LEVEL=loud: want one warning naming the accepted values, got:\n{log}"
    );
    ensure!(
        !log.contains(" INFO "),
        "LOG_LEVEL=loud logs at info:\n{log}"
    );
    drop(d);

    // Case-insensitive wireguard-go value: info lines, each naming interface and process.
    let ifname = env.name("wv")?;
    let d = Daemon::start_rs_with(
        &env,
        &ns,
        &ifname,
        &env.rs_dir,
        &[("LOG_LEVEL", "Verbose")],
        true,
    )?;
    ensure!(
        wait_until(Duration::from_secs(3), || d.log().contains("ready")),
        "no info line at LOG_LEVEL=Verbose:\n{}",
        d.log()
    );
    let log = d.log();
    let tagged = format!("wireguard-rs[{ifname}]");
    let untagged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" INFO ") || l.contains(" WARN "))
        .filter(|l| !l.contains(&tagged))
        .collect();
    ensure!(
        untagged.is_empty(),
        "log lines without {tagged}:\n{}",
        untagged.join("\n")
    );
    for process in ["keyd", "datad"] {
        ensure!(
            log.contains(&format!("{tagged} {process}: ")),
            "no line from {process} tagged `{tagged} {process}: `:\n{log}"
        );
    }
    drop(d);

    // silent: nothing at all.
    let ifname = env.name("ws")?;
    let d = Daemon::start_rs_with(
        &env,
        &ns,
        &ifname,
        &env.rs_dir,
        &[("LOG_LEVEL", "SILENT")],
        true,
    )?;
    d.dump()?;
    ensure!(
        d.log().trim().is_empty(),
        "LOG_LEVEL=SILENT logged:\n{}",
        d.log()
    );

    // In the background with LOG_LEVEL set, the daemon keeps the command's stderr (its
    // lines arrive after the command returned, so they go to a file here).
    let ifname = env.name("wb")?;
    let _guard = Backgrounded {
        bin: env.rs_bin(),
        ifname: ifname.clone(),
    };
    let log_path = env.dir.path().join("background.log");
    let file = std::fs::File::create(&log_path)?;
    let mut c = ns.command(&env.rs_bin().to_string_lossy(), &[&ifname]);
    c.env("LOG_LEVEL", "info").stderr(file);
    let status = c.status()?;
    ensure!(
        status.success(),
        "background start with LOG_LEVEL=info: {status}"
    );
    let bg_log = std::fs::read_to_string(&log_path)?;
    ensure!(
        bg_log.contains(&format!("wireguard-rs[{ifname}]")) && bg_log.contains("ready"),
        "the background daemon's log did not reach the command's stderr:\n{bg_log}"
    );
    Ok(())
}

#[test]
fn version_of_all_three_binaries() -> Result<()> {
    let env = setup!("vr");
    let version = |bin: &str| -> Result<String> {
        let mut c = std::process::Command::new(env.rs_dir.join(bin));
        c.arg("--version").env_remove("WG_RS_IPC_FD");
        let out = cmd::output(&mut c, SHORT)?;
        ensure!(
            out.status.success(),
            "`{bin} --version`: {} {}",
            out.status,
            stderr(&out)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let main = version("wireguard-rs")?;
    let first = main.lines().next().unwrap_or_default();
    ensure!(
        first.starts_with("wireguard-rs ") && first.contains("(commit "),
        "first line {first:?}"
    );
    let dir = env.rs_dir.canonicalize()?;
    ensure!(
        main.contains(&format!("helpers: {}", dir.display()))
            || main.contains(&format!("helpers: {}", env.rs_dir.display())),
        "no helper directory {} in:\n{main}",
        dir.display()
    );
    ensure!(
        main.contains("wireguard-rs-keyd ")
            && main.contains("wireguard-rs-datad ")
            && main.contains("aead ")
            && main.contains("platform: Linux x86_64 (seccomp policies for this architecture)"),
        "`wireguard-rs --version`:\n{main}"
    );
    for bin in ["wireguard-rs-keyd", "wireguard-rs-datad"] {
        let v = version(bin)?;
        ensure!(
            v.trim().starts_with(&format!("{bin} ")) && v.contains("(commit "),
            "`{bin} --version`: {v:?}"
        );
    }
    println!("{main}");
    Ok(())
}

/// A worker that fails after the background start (here: the key process cannot lock its
/// memory at all) tells the monitor why before it exits, and the command prints that reason,
/// not only "the key process exited": its own standard error goes nowhere in background mode.
#[test]
fn a_worker_failure_in_background_mode_reaches_the_user_with_its_reason() -> Result<()> {
    let env = setup!("wf");
    let ns = Namespace::create(&env.name("n")?)?;
    let bin = env.rs_bin().to_string_lossy().into_owned();
    let ifname = env.name("w")?;
    let _guard = Backgrounded {
        bin: env.rs_bin(),
        ifname: ifname.clone(),
    };
    if !(cmd::on_path("prlimit") && cmd::on_path("setpriv")) {
        bail!("prlimit and setpriv are needed (apt-get install util-linux)");
    }
    // A memlock limit of 0 that keyd cannot raise (no CAP_SYS_RESOURCE) nor bypass (no
    // CAP_IPC_LOCK): it refuses to hold keys that could be swapped out.
    let argv = [
        "--memlock=0:0",
        "setpriv",
        "--bounding-set",
        "-ipc_lock,-sys_resource",
        "--inh-caps",
        "-ipc_lock,-sys_resource",
        "--",
        &bin,
        &ifname,
    ];
    let mut c = ns.command("prlimit", &argv);
    c.env_remove("LOG_LEVEL").env_remove("NOTIFY_SOCKET");
    let out = cmd::output(&mut c, Duration::from_secs(30))?;
    ensure_refused(
        "keyd without any lockable memory",
        &out,
        &ns,
        &ifname,
        &["key process", "RLIMIT_MEMLOCK", "LimitMEMLOCK"],
    )?;
    Ok(())
}
