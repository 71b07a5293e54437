//! The sandbox, proven from `/proc` of a running daemon: every process has seccomp and
//! `no_new_privs`; the workers run unprivileged without capabilities, keyd in an empty
//! root; the monitor keeps exactly `CAP_NET_ADMIN` and `CAP_KILL`. The static private key and the PSK are
//! in keyd's memory and in no other process; keyd has only AF_UNIX sockets; datad holds
//! the UDP sockets but not the UAPI socket. Killing datad repairs itself, killing keyd
//! takes the interface down (fail closed), and a forbidden syscall kills the worker with
//! the monitor naming it (a build with the workers' test hooks). Last, the in-process
//! mode (`wg-embed`) carries a tunnel and stops when its interface is deleted.
//!
//! Our daemon is on side A; the peer on side B is wireguard-go, so every wireguard-rs
//! process in sight belongs to the daemon under test.
// Linux only: network namespaces and the Linux daemon.
#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use wg_e2e::daemon::socket_path;
use wg_e2e::embedded::Embedded;
use wg_e2e::env::test_hooks_bin_dir;
use wg_e2e::proc::{
    CAP_NET_BIND_SERVICE, CAP_SETS, MONITOR_CAPS, Role, RsProcesses, Status, alive, inet_sockets,
    key_bytes, root_dir, scan_memory, sigkill, socket_inodes, unix_sockets,
};
use wg_e2e::topo::{PORTS, TUN4, TUN6, UNDER4, address_tunnel, two_hosts};
use wg_e2e::{
    Daemon, Impl, Namespace, Pair, PairSpec, Solo, Underlay, cmd, link_exists, ping, ping_fails,
    ping_ok, setup, wait_until,
};

/// keyd's root directory after start-up.
const EMPTY_ROOT: &str = "/run/wireguard-rs/empty";
/// The documented crash-loop limit: more than 5 data-plane deaths within 30 s stop the
/// daemon, so a data plane that always dies dies 6 times.
const DATAD_DEATHS_BEFORE_GIVING_UP: usize = 6;
/// Rounds of the keyd case of the forbidden-syscall test: the monitor lost the syscall's
/// name in 1 start in 9 to 1 in 16 (the race in the test's ignore reason), so 40 rounds
/// (about 2 s) show it in nearly every run.
const KEYD_ROUNDS: usize = 40;

/// A worker (keyd, spawner, datad): seccomp filter mode, `no_new_privs`, every capability
/// set empty, no root among its user and group ids, no supplementary groups.
fn check_worker(role: Role, st: &Status) -> Result<()> {
    let mut bad = Vec::new();
    if st.get("Seccomp")? != "2" {
        bad.push(format!("Seccomp {}", st.get("Seccomp")?));
    }
    if st.get("NoNewPrivs")? != "1" {
        bad.push(format!("NoNewPrivs {}", st.get("NoNewPrivs")?));
    }
    for set in CAP_SETS {
        let v = st.cap(set)?;
        if v != 0 {
            bad.push(format!("{set} {v:016x}"));
        }
    }
    for key in ["Uid", "Gid"] {
        let ids = st.ids(key)?;
        if ids.contains(&0) {
            bad.push(format!("{key} {ids:?} includes root"));
        }
    }
    if !st.get("Groups")?.is_empty() {
        bad.push(format!("supplementary groups {}", st.get("Groups")?));
    }
    ensure!(
        bad.is_empty(),
        "{} (pid {}) is not sandboxed: {}; status: {}",
        role.name(),
        st.pid,
        bad.join(", "),
        st.summary()
    );
    Ok(())
}

/// The monitor: seccomp, `no_new_privs`, and exactly `CAP_NET_ADMIN` and `CAP_KILL` in the
/// effective, permitted and bounding sets, nothing inheritable or ambient.
fn check_monitor(st: &Status) -> Result<()> {
    let mut bad = Vec::new();
    if st.get("Seccomp")? != "2" {
        bad.push(format!("Seccomp {}", st.get("Seccomp")?));
    }
    if st.get("NoNewPrivs")? != "1" {
        bad.push(format!("NoNewPrivs {}", st.get("NoNewPrivs")?));
    }
    for (set, want) in [
        ("CapEff", MONITOR_CAPS),
        ("CapPrm", MONITOR_CAPS),
        ("CapBnd", MONITOR_CAPS),
        ("CapInh", 0),
        ("CapAmb", 0),
    ] {
        let v = st.cap(set)?;
        if v != want {
            bad.push(format!("{set} {v:016x} (want {want:016x})"));
        }
    }
    ensure!(
        bad.is_empty(),
        "monitor (pid {}) is not sandboxed: {}; status: {}",
        st.pid,
        bad.join(", "),
        st.summary()
    );
    Ok(())
}

fn check_role(role: Role, pid: u32) -> Result<Status> {
    let st = Status::read(pid)?;
    match role {
        Role::Monitor => check_monitor(&st)?,
        _ => check_worker(role, &st)?,
    }
    Ok(st)
}

/// Our daemon in A (the initiator), wireguard-go in B, IPv4 underlay.
fn rs_against_go(psk: bool) -> PairSpec {
    PairSpec {
        a: Impl::Rs,
        b: Impl::Go,
        underlay: Underlay::V4,
        psk,
        b_knows_a: true,
    }
}

#[test]
fn every_process_is_sandboxed() -> Result<()> {
    let env = setup!("ps");
    let solo = Solo::rs_keyed(&env)?;
    let procs = RsProcesses::wait(&solo.d, Duration::from_secs(10))?;
    let mut failures = Vec::new();
    for (role, pid) in procs.all() {
        let root = root_dir(pid).map_or_else(|e| format!("({e:#})"), |p| p.display().to_string());
        match check_role(role, pid) {
            Ok(st) => println!("{:7} pid {pid}: {} root={root}", role.name(), st.summary()),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    match root_dir(procs.keyd) {
        Ok(root) if root.as_os_str() == EMPTY_ROOT => {}
        other => failures.push(format!(
            "keyd (pid {}) has root {other:?}, want {EMPTY_ROOT}",
            procs.keyd
        )),
    }
    solo.d.ensure_no_failures(&failures)
}

/// CAP_NET_BIND_SERVICE is kept by default (a port below 1024 works, as with wireguard-go)
/// and dropped with `--no-low-ports` (such a port is then refused and the old one kept);
/// `--allow-low-ports`, the old opt-in, is still accepted.
#[test]
fn low_listen_ports_follow_the_capability_the_monitor_keeps() -> Result<()> {
    let env = setup!("lp");
    let ns = Namespace::create(&env.name("n")?)?;
    for (flag, allowed, name) in [
        (None, true, "d"),
        (Some("--allow-low-ports"), true, "y"),
        (Some("--no-low-ports"), false, "x"),
    ] {
        let ifname = env.name(name)?;
        let extra: Vec<&str> = flag.into_iter().collect();
        let d = Daemon::start_rs_args(&env, &ns, &ifname, &extra)?;
        let procs = RsProcesses::wait(&d, Duration::from_secs(10))?;
        let monitor = Status::read(procs.monitor)?;
        let want = if allowed {
            MONITOR_CAPS
        } else {
            MONITOR_CAPS & !CAP_NET_BIND_SERVICE
        };
        ensure!(
            monitor.cap("CapEff")? == want && monitor.cap("CapBnd")? == want,
            "monitor capabilities with {flag:?}: {}",
            monitor.summary()
        );
        let k = env.keys(&format!("k{name}"))?;
        d.set(&[
            "private-key",
            &k.file.to_string_lossy(),
            "listen-port",
            "51999",
        ])?;
        let low = d.set(&["listen-port", "443"]);
        ensure!(
            low.is_ok() == allowed,
            "listen-port 443 with {flag:?}: {low:?}\n{}",
            d.log_tail(10)
        );
        let port = d.dump()?.listen_port;
        ensure!(
            port == if allowed { 443 } else { 51999 },
            "listen port is {port}"
        );
    }
    Ok(())
}

#[test]
fn static_key_and_psk_live_only_in_keyd() -> Result<()> {
    let env = setup!("km");
    let pair = Pair::new(&env, rs_against_go(true))?;
    let run = || -> Result<()> {
        ping_ok(&pair.hosts.a, TUN4[1], &[])?;
        ping_ok(&pair.hosts.b, TUN4[0], &[])?;
        let dump = pair.a.dump()?;
        let peer = dump.peer(&pair.kb.public)?;
        ensure!(
            peer.latest_handshake > 0 && peer.preshared_key == pair.psk,
            "no handshake with the PSK: {peer:?}"
        );
        let psk = pair.psk.as_deref().context("the pair has no PSK")?;
        let key = key_bytes(&pair.ka.private)?;
        let psk = key_bytes(psk)?;
        ensure!(key.len() == 32 && psk.len() == 32, "keys are not 32 bytes");
        let procs = RsProcesses::wait(&pair.a, Duration::from_secs(10))?;
        let mut failures = Vec::new();
        for (role, pid) in procs.all() {
            let started = Instant::now();
            let scan = scan_memory(pid, &[&key, &psk])
                .with_context(|| format!("reading the memory of {} (pid {pid})", role.name()))?;
            println!(
                "{:7} pid {pid}: private key {}, PSK {}; {} regions, {} KiB read in {:.1} s; \
                 unreadable: {:?}",
                role.name(),
                if scan.found[0] { "FOUND" } else { "absent" },
                if scan.found[1] { "FOUND" } else { "absent" },
                scan.regions_read,
                scan.bytes_read / 1024,
                started.elapsed().as_secs_f64(),
                scan.unreadable
            );
            // An empty scan would make "absent" meaningless.
            if scan.bytes_read < 1 << 20 {
                failures.push(format!(
                    "{} (pid {pid}): only {} bytes of memory could be read",
                    role.name(),
                    scan.bytes_read
                ));
            }
            let want = role == Role::Keyd;
            for (what, found) in [
                ("static private key", scan.found[0]),
                ("PSK", scan.found[1]),
            ] {
                if found != want {
                    failures.push(format!(
                        "the {what} is {} the memory of {} (pid {pid})",
                        if found { "in" } else { "not in" },
                        role.name()
                    ));
                }
            }
        }
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    };
    run().with_context(|| pair.diag())
}

#[test]
fn keyd_has_no_inet_socket_and_datad_has_no_uapi_socket() -> Result<()> {
    let env = setup!("so");
    let solo = Solo::new(&env, Impl::Rs)?;
    let k = env.keys("i")?;
    let port = PORTS[0];
    solo.d.set(&[
        "private-key",
        &k.file.to_string_lossy(),
        "listen-port",
        &port.to_string(),
    ])?;
    ensure!(solo.d.dump()?.listen_port == port, "listen port not set");
    let uapi_path = socket_path(&solo.d.ifname).display().to_string();
    let procs = RsProcesses::wait(&solo.d, Duration::from_secs(10))?;

    // datad gets the new port's sockets from the monitor after the rebind: wait for them.
    let udp_on_port = |pid: u32| -> Result<Vec<u64>> {
        Ok(inet_sockets(pid)?
            .into_iter()
            .filter(|s| s.table.starts_with("udp") && s.local_port == port)
            .map(|s| s.inode)
            .collect())
    };
    let datad_has_all = || -> Result<bool> {
        let listen = udp_on_port(procs.datad)?;
        let held = socket_inodes(procs.datad)?;
        Ok(!listen.is_empty() && listen.iter().all(|i| held.contains(i)))
    };
    wait_until(Duration::from_secs(5), || datad_has_all().unwrap_or(false));

    let mut failures = Vec::new();
    // keyd: every socket is in the AF_UNIX table, none in an IP table; one of them is
    // the UAPI listener (so the check sees the right namespace and process).
    let keyd_fds = socket_inodes(procs.keyd)?;
    let unix = unix_sockets(procs.keyd)?;
    let inet = inet_sockets(procs.keyd)?;
    for inode in &keyd_fds {
        if let Some(s) = inet.iter().find(|s| s.inode == *inode) {
            failures.push(format!(
                "keyd holds an IP socket: {} port {} (inode {inode})",
                s.table, s.local_port
            ));
        } else if !unix.iter().any(|s| s.inode == *inode) {
            failures.push(format!(
                "keyd holds socket inode {inode}, which is not AF_UNIX"
            ));
        }
    }
    let keyd_listener = unix.iter().any(|s| {
        s.listening && s.path.as_deref() == Some(uapi_path.as_str()) && keyd_fds.contains(&s.inode)
    });
    if !keyd_listener {
        failures.push(format!("keyd does not hold the UAPI listener {uapi_path}"));
    }
    println!(
        "keyd    pid {}: {} sockets, all AF_UNIX: {}; holds the UAPI listener: {keyd_listener}",
        procs.keyd,
        keyd_fds.len(),
        keyd_fds.iter().all(|i| unix.iter().any(|s| s.inode == *i))
    );

    // datad: no socket with the UAPI path (neither the listener nor an accepted
    // connection), and every UDP socket of the listen port.
    let datad_fds = socket_inodes(procs.datad)?;
    let unix = unix_sockets(procs.datad)?;
    for s in unix
        .iter()
        .filter(|s| datad_fds.contains(&s.inode) && s.path.as_deref() == Some(uapi_path.as_str()))
    {
        failures.push(format!(
            "datad holds the UAPI {} {uapi_path} (inode {})",
            if s.listening {
                "listener"
            } else {
                "connection"
            },
            s.inode
        ));
    }
    let listen = udp_on_port(procs.datad)?;
    let inet = inet_sockets(procs.datad)?;
    let datad_udp: Vec<String> = inet
        .iter()
        .filter(|s| datad_fds.contains(&s.inode))
        .map(|s| format!("{}:{} (inode {})", s.table, s.local_port, s.inode))
        .collect();
    if listen.is_empty() {
        failures.push(format!("no UDP socket on port {port} in the namespace"));
    }
    for inode in &listen {
        if !datad_fds.contains(inode) {
            failures.push(format!(
                "datad does not hold the UDP socket of port {port} with inode {inode}"
            ));
        }
    }
    println!(
        "datad   pid {}: {} sockets; IP sockets {datad_udp:?}; UDP sockets on port {port} in the \
         namespace: {listen:?}",
        procs.datad,
        datad_fds.len()
    );
    solo.d.ensure_no_failures(&failures)
}

#[test]
fn killing_datad_restarts_it_and_the_tunnel_comes_back() -> Result<()> {
    let env = setup!("dk");
    let pair = Pair::new(&env, rs_against_go(false))?;
    let ha = &pair.hosts.a;
    let run = || -> Result<()> {
        ping_ok(ha, TUN4[1], &[])?;
        let before = RsProcesses::wait(&pair.a, Duration::from_secs(10))?;
        sigkill(before.datad)?;
        let killed = Instant::now();
        let mut after = None;
        wait_until(Duration::from_secs(10), || {
            after = RsProcesses::of(&pair.a)
                .ok()
                .filter(|p| p.datad != before.datad);
            after.is_some()
        });
        let after = after.with_context(|| {
            format!(
                "no new data plane within 10 s of killing datad (pid {}); tree: {:?}",
                before.datad,
                pair.a.process_tree()
            )
        })?;
        ensure!(
            (after.monitor, after.keyd, after.spawner)
                == (before.monitor, before.keyd, before.spawner),
            "killing datad changed the other processes: before {before:?}, after {after:?}"
        );
        // Bounded: pings for up to 20 s, no reconfiguration.
        let mut back = false;
        while killed.elapsed() < Duration::from_secs(20) {
            if ping(ha, TUN4[1], 1, 1, &[])?.ok() {
                back = true;
                break;
            }
        }
        ensure!(
            back,
            "the tunnel did not come back within 20 s of killing datad (pid {} -> {})",
            before.datad,
            after.datad
        );
        println!(
            "datad {} killed; new datad {}; tunnel back after {:.1} s",
            before.datad,
            after.datad,
            killed.elapsed().as_secs_f64()
        );
        ping_ok(ha, TUN4[1], &[])?;
        ping_ok(ha, TUN6[1], &[])?;
        let st = check_role(Role::Datad, after.datad)?;
        println!("new datad pid {}: {}", after.datad, st.summary());
        ensure!(
            pair.a.log().contains("restarting it"),
            "the monitor did not log the restart"
        );
        Ok(())
    };
    run().with_context(|| pair.diag())
}

/// A ping from `ns` to `dst` gets no reply: either no statistics because nothing could be
/// sent (no route once the interface is gone) or statistics with 0 received.
fn no_reply(ns: &Namespace, dst: &str) -> Result<()> {
    let mut c = ns.command("ping", &["-n", "-c", "3", "-i", "0.2", "-W", "1", dst]);
    let out = cmd::output(&mut c, Duration::from_secs(15))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(s) = wg_e2e::PingStats::parse(&text) {
        ensure!(
            s.received == 0,
            "[{}] ping {dst} got replies: {s}",
            ns.name()
        );
    } else {
        ensure!(
            !out.status.success(),
            "[{}] ping {dst} succeeded without statistics: {text}",
            ns.name()
        );
    }
    Ok(())
}

#[test]
fn killing_keyd_takes_the_interface_down() -> Result<()> {
    let env = setup!("kk");
    let mut pair = Pair::new(&env, rs_against_go(false))?;
    let run = |pair: &mut Pair| -> Result<()> {
        let (ha, hb) = (&pair.hosts.a, &pair.hosts.b);
        ping_ok(ha, TUN4[1], &[])?;
        let procs = RsProcesses::wait(&pair.a, Duration::from_secs(10))?;
        let tree = pair.a.process_tree();
        sigkill(procs.keyd)?;
        let status = pair.a.wait_exit(Duration::from_secs(5))?;
        let Some(status) = status else {
            bail!("the monitor did not exit within 5 s of killing keyd");
        };
        ensure!(
            !status.success(),
            "the monitor exited with {status} after keyd was killed"
        );
        let ifname = pair.a.ifname.clone();
        ensure!(
            wait_until(Duration::from_secs(5), || !link_exists(ha, &ifname)),
            "{ifname} still exists 5 s after the monitor exited"
        );
        ensure!(
            wait_until(Duration::from_secs(2), || !pair.a.socket().exists()),
            "{} is left behind",
            pair.a.socket().display()
        );
        ensure!(
            wait_until(Duration::from_secs(5), || !tree.iter().any(|p| alive(*p))),
            "processes of the daemon still alive: {:?} (tree was {tree:?})",
            tree.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        no_reply(ha, TUN4[1])?;
        ping_fails(hb, TUN4[0], &[])?;
        let last = pair
            .a
            .log()
            .lines()
            .rfind(|l| l.starts_with("wireguard-rs:"))
            .unwrap_or_default()
            .to_owned();
        ensure!(
            last.contains("key process"),
            "the monitor's last error does not name the key process: {last:?}"
        );
        println!("monitor exited with {status}: {last}");
        Ok(())
    };
    let r = run(&mut pair);
    r.with_context(|| pair.diag())
}

/// The final error line of a wireguard-rs log (`wireguard-rs: …` from the monitor).
fn monitor_error_line(log: &str, starts: &str) -> Option<String> {
    log.lines()
        .rfind(|l| l.starts_with(&format!("wireguard-rs: {starts}")))
        .map(str::to_owned)
}

/// datad calls socket(AF_INET) after locking down: each one dies, the monitor names the
/// syscall and restarts it, until the crash-loop limit stops the daemon.
fn forbidden_syscall_in_datad(env: &wg_e2e::Env, ns: &Namespace) -> Result<()> {
    let bin = test_hooks_bin_dir()?;
    let mut d = Daemon::start_rs_with(
        env,
        ns,
        &env.name("wd")?,
        &bin,
        &[("WG_RS_TEST_FORBIDDEN_SYSCALL", "datad")],
        false,
    )?;
    let status = d
        .wait_exit(Duration::from_secs(40))?
        .context("the daemon with a data plane that always dies did not exit within 40 s")?;
    let log = d.log();
    ensure!(
        !status.success(),
        "exited with {status} although every data plane died; log:\n{log}"
    );
    let named: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("data plane (pid")
                && l.contains("forbidden syscall: socket (41)")
                && l.contains("restarting it")
        })
        .collect();
    ensure!(
        named.len() == DATAD_DEATHS_BEFORE_GIVING_UP,
        "{} data-plane deaths named the syscall, want {DATAD_DEATHS_BEFORE_GIVING_UP} \
         (one start and 5 restarts); log:\n{log}",
        named.len()
    );
    let last = monitor_error_line(&log, "the data plane died")
        .with_context(|| format!("no crash-loop error from the monitor; log:\n{log}"))?;
    ensure!(
        !log.contains("the key process exited"),
        "keyd died too; log:\n{log}"
    );
    println!(
        "datad: {} deaths named, e.g. {:?}; monitor: {last:?} ({status})",
        named.len(),
        named
            .first()
            .map(|l| l.split_once(" WARN ").map_or(*l, |(_, m)| m.trim()))
    );
    ensure!(
        wait_until(Duration::from_secs(2), || !d.socket().exists()),
        "{} left behind",
        d.socket().display()
    );
    Ok(())
}

/// keyd calls socket(AF_INET) after locking down: it dies, and the monitor exits with an
/// error naming the syscall. Repeated: the naming must not depend on timing.
fn forbidden_syscall_in_keyd(env: &wg_e2e::Env, ns: &Namespace, rounds: usize) -> Result<()> {
    let bin = test_hooks_bin_dir()?;
    let mut unnamed = Vec::new();
    for round in 0..rounds {
        let ifname = env.name(&format!("k{round}"))?;
        let mut d = Daemon::start_rs_with(
            env,
            ns,
            &ifname,
            &bin,
            &[("WG_RS_TEST_FORBIDDEN_SYSCALL", "keyd")],
            false,
        )?;
        let status = d
            .wait_exit(Duration::from_secs(10))?
            .context("the daemon did not exit within 10 s of keyd's forbidden syscall")?;
        let log = d.log();
        ensure!(
            !status.success(),
            "round {round}: exited with {status} although keyd died; log:\n{log}"
        );
        ensure!(
            log.contains("seccomp refused a syscall"),
            "round {round}: keyd's SIGSYS handler did not run; log:\n{log}"
        );
        // The monitor's final error (the SIGSYS handler's own line is keyd's).
        let last = log
            .lines()
            .rfind(|l| l.starts_with("wireguard-rs: ") && !l.contains("seccomp refused"))
            .with_context(|| format!("round {round}: no error from the monitor; log:\n{log}"))?;
        if !last.contains("the key process exited")
            || !last.contains("forbidden syscall: socket (41)")
        {
            unnamed.push(format!("round {round}: {last}"));
        } else if round == 0 {
            println!("keyd: monitor said {last:?} ({status})");
        }
        ensure!(
            wait_until(Duration::from_secs(5), || !link_exists(ns, &ifname)),
            "round {round}: {ifname} still exists after the monitor exited"
        );
    }
    ensure!(
        unnamed.is_empty(),
        "in {} of {rounds} starts the monitor did not name keyd's forbidden syscall:\n{}",
        unnamed.len(),
        unnamed.join("\n")
    );
    Ok(())
}

#[test]
fn forbidden_syscall_in_datad_is_named_and_datad_restarted() -> Result<()> {
    let env = setup!("fd");
    let ns = Namespace::create(&env.name("n")?)?;
    forbidden_syscall_in_datad(&env, &ns)
}

#[test]
fn forbidden_syscall_kills_the_worker_and_the_monitor_names_it() -> Result<()> {
    let env = setup!("fs");
    let ns = Namespace::create(&env.name("n")?)?;
    forbidden_syscall_in_datad(&env, &ns)?;
    forbidden_syscall_in_keyd(&env, &ns, KEYD_ROUNDS)
}

#[test]
fn in_process_mode_carries_a_tunnel() -> Result<()> {
    let env = setup!("emb");
    let hosts = two_hosts(&env)?;
    let (b, ka, kb) = wg_e2e::topo::go_peer_on_b(&env, &hosts)?;

    let ifname = env.name("wa")?;
    let mut embedded = Embedded::start(&hosts.a, &ifname)?;
    let run = |embedded: &mut Embedded| -> Result<()> {
        embedded.wg(&[
            "set",
            &ifname,
            "private-key",
            &ka.file.to_string_lossy(),
            "listen-port",
            &PORTS[0].to_string(),
            "peer",
            &kb.public,
            "allowed-ips",
            &format!("{}/32,{}/128", TUN4[1], TUN6[1]),
            "endpoint",
            &format!("{}:{}", UNDER4[1], PORTS[1]),
        ])?;
        address_tunnel(&hosts.a, &ifname, TUN4[0], TUN6[0])?;
        ping_ok(&hosts.a, TUN4[1], &[])?;
        ping_ok(&hosts.a, TUN6[1], &[])?;
        ping_ok(&hosts.b, TUN4[0], &[])?;
        let dump = wg_e2e::Dump::parse(&embedded.wg(&["show", &ifname, "dump"])?)?;
        ensure!(
            dump.public_key == ka.public && dump.listen_port == PORTS[0],
            "the in-process daemon shows {dump:?}"
        );
        let peer = dump.peer(&kb.public)?;
        ensure!(
            peer.latest_handshake > 0 && peer.rx > 0 && peer.tx > 0,
            "no handshake or traffic in `wg show dump`: {peer:?}"
        );
        hosts.a.ip(&["link", "del", &ifname])?;
        let deleted = Instant::now();
        let r = embedded.wait(Duration::from_secs(5))?;
        ensure!(
            matches!(r, Ok(wg_embed::Stopped::InterfaceGone)),
            "wg_embed::run returned {r:?} after the interface was deleted, want \
             Ok(InterfaceGone)"
        );
        println!(
            "in-process: tunnel carried pings; run returned {r:?} {:.1} s after `ip link del`",
            deleted.elapsed().as_secs_f64()
        );
        Ok(())
    };
    run(&mut embedded).with_context(|| b.diag())
}
