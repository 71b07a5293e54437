//! Containment: what a change of the static key, a deleted UAPI socket, a killed monitor
//! and a lying data plane may and may not leave behind, and how far the configuration
//! interface stretches.
//!
//! - A new private key expires every session at once: the old one must not carry another
//!   packet while the peer (wireguard-go) still knows only the old public key; a handshake
//!   under the new key brings the tunnel back (ours as initiator and as responder).
//! - Deleting `/var/run/wireguard/IF.sock` stops the daemon with status 0, as wireguard-go.
//! - The limits UAPI documents reach the data plane: one peer with 100 000 allowed IPs and
//!   10 000 peers, each set with `wg setconf`, listed whole by `wg show dump`, the tunnel to
//!   the real peer still working.
//! - From `/proc`: keyd and datad run as two different dedicated users (neither root nor
//!   `nobody`), the spawner as datad's; every worker is not dumpable; a missing user is a
//!   clear error.
//! - `kill -9` of the monitor leaves no worker behind, also when every worker is stopped
//!   and so cannot notice its closed channels (only the parent-death signal ends it).
//! - A data plane that falsely reports the interface gone (a build with the data plane's
//!   test hook) is replaced; the daemon keeps running and the tunnel works.
//! - The UAPI socket serves root (the user who started the daemon) only: clients running as
//!   keyd's or datad's user are refused even where the socket's file permissions let them
//!   connect.
//!
//! Our daemon is on side A unless a case says otherwise; its peer is wireguard-go.
// Linux only: network namespaces and the Linux daemon.
#![cfg(target_os = "linux")]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use blake2::{Blake2s256, Digest};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};
use wg_e2e::daemon::SOCKET_DIR;
use wg_e2e::env::{Keys, PrivateDir, SHORT, test_hooks_bin_dir};
use wg_e2e::proc::{Role, RsProcesses, Status, alive, role_of, sigkill, state};
use wg_e2e::topo::{PORTS, TUN4, TUN6, address_tunnel, two_hosts};
use wg_e2e::{
    Daemon, Dump, Env, Impl, Namespace, Pair, PairSpec, Solo, Underlay, cmd, link_exists, ping,
    ping_ok, setup, wait_until,
};

/// The dedicated users `cargo xtask setup` creates, the workers' defaults.
const KEYD_USER: &str = "wireguard-rs-keyd";
const DATAD_USER: &str = "wireguard-rs-datad";
/// `nobody`, the old shared default.
const NOBODY_UID: u32 = 65534;
/// A user name no system has.
const NO_SUCH_USER: &str = "nosuchuser-xyz";
/// The data plane's test hook (feature `wg-datad/test-hooks`): the data plane that reads
/// the one byte in this FIFO reports the interface gone although it exists.
const LIE_ENV: &str = "WG_RS_TEST_LIE_INTERFACE_GONE";
/// Allowed IPs of the one-peer case and peers of the many-peers case.
const MANY_ALLOWED_IPS: usize = 100_000;
const MANY_PEERS: usize = 10_000;
/// Bound for `wg setconf` and `wg show dump` of the large configurations.
const LARGE: Duration = Duration::from_secs(40);

/// No reply from `dst`: 3 pings, 1 s wait each; a ping that could not even send (no
/// statistics) counts as no reply.
fn no_reply(ns: &Namespace, dst: &str) -> Result<()> {
    match ping(ns, dst, 3, 1, &[]) {
        Ok(s) => ensure!(
            s.received == 0,
            "[{}] ping {dst} got replies: {s}",
            ns.name()
        ),
        Err(e) => println!("[{}] ping {dst}: {e:#} (counted as no reply)", ns.name()),
    }
    Ok(())
}

/// `wg ARGS…` in the daemon's namespace with a longer bound than [`Daemon::wg`].
fn wg_long(d: &Daemon, args: &[&str], timeout: Duration) -> Result<String> {
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &d.ns, "wg"]).args(args);
    let out = cmd::output(&mut c, timeout)?;
    cmd::ensure_success(&c, &out).with_context(|| d.log_tail(20))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Configures side `i` (0 = A, 1 = B) of the standard topology as [`Pair::new`] does: key,
/// listen port, the other side as peer with its tunnel addresses and (if `endpoint`) its
/// IPv4 underlay endpoint; then the interface's addresses.
fn configure(
    d: &Daemon,
    ns: &Namespace,
    i: usize,
    me: &Keys,
    peer: &str,
    endpoint: bool,
) -> Result<()> {
    let key = me.file.to_string_lossy().into_owned();
    let port = PORTS[i].to_string();
    let allowed = format!("{}/32,{}/128", TUN4[1 - i], TUN6[1 - i]);
    let ep = Underlay::V4.endpoint(1 - i);
    let mut args = vec![
        "private-key",
        key.as_str(),
        "listen-port",
        &port,
        "peer",
        peer,
        "allowed-ips",
        &allowed,
    ];
    if endpoint {
        args.extend(["endpoint", ep.as_str()]);
    }
    d.set(&args)
        .with_context(|| format!("configuring {} in {}", d.kind.name(), d.ns))?;
    address_tunnel(ns, &d.ifname, TUN4[i], TUN6[i])
}

/// Pings both ways over IPv4 and IPv6.
fn tunnel_works(pair: &Pair) -> Result<()> {
    ping_ok(&pair.hosts.a, TUN4[1], &[])?;
    ping_ok(&pair.hosts.a, TUN6[1], &[])?;
    ping_ok(&pair.hosts.b, TUN4[0], &[])?;
    ping_ok(&pair.hosts.b, TUN6[0], &[])?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 1. A new private key expires every session.

/// Ours on side `ours` (0 = A, the initiator; 1 = B, the responder), wireguard-go on the
/// other. Tunnel up; ours gets a new private key; no ping gets through either way while
/// wireguard-go knows only the old public key; wireguard-go's peer is replaced by the new
/// key; the tunnel works again after a new handshake.
fn key_change_case(env: &Env, ours: usize) -> Result<()> {
    let (a, b) = if ours == 0 {
        (Impl::Rs, Impl::Go)
    } else {
        (Impl::Go, Impl::Rs)
    };
    let pair = Pair::new(
        env,
        PairSpec {
            a,
            b,
            underlay: Underlay::V4,
            psk: false,
            b_knows_a: true,
        },
    )?;
    let run = || -> Result<()> {
        let (rs, go) = if ours == 0 {
            (&pair.a, &pair.b)
        } else {
            (&pair.b, &pair.a)
        };
        let (rs_keys, go_keys) = if ours == 0 {
            (&pair.ka, &pair.kb)
        } else {
            (&pair.kb, &pair.ka)
        };
        // The initiator pings first, so ours is the initiator or the responder of the
        // session as asked.
        tunnel_works(&pair)?;
        let before = rs.dump()?.peer(&go_keys.public)?.latest_handshake;
        ensure!(before > 0, "no handshake recorded by ours");

        let new = env.keys("new")?;
        rs.set(&["private-key", &new.file.to_string_lossy()])?;
        ensure!(
            rs.dump()?.public_key == new.public,
            "ours does not show the new public key"
        );
        let changed = Instant::now();
        // wireguard-go still knows only the old public key: the old session must not carry
        // anything now, and no new one can be made.
        for (from, to) in [
            (&pair.hosts.a, TUN4[1]),
            (&pair.hosts.b, TUN4[0]),
            (&pair.hosts.a, TUN6[1]),
        ] {
            no_reply(from, to).with_context(|| {
                format!(
                    "{:.1} s after ours changed its private key, the session made with the old \
                     key still carries traffic",
                    changed.elapsed().as_secs_f64()
                )
            })?;
        }

        // wireguard-go learns the new key (same allowed IPs and endpoint).
        let allowed = format!("{}/32,{}/128", TUN4[ours], TUN6[ours]);
        let endpoint = Underlay::V4.endpoint(ours);
        go.set(&[
            "peer",
            &rs_keys.public,
            "remove",
            "peer",
            &new.public,
            "allowed-ips",
            &allowed,
            "endpoint",
            &endpoint,
        ])?;
        tunnel_works(&pair).context("with wireguard-go told the new key")?;
        let after = rs.dump()?.peer(&go_keys.public)?.latest_handshake;
        ensure!(
            after > before,
            "latest handshake did not change ({before} -> {after})"
        );
        let go_view = go.dump()?;
        let go_peer = go_view.peer(&new.public)?;
        ensure!(
            go_peer.latest_handshake > 0,
            "wireguard-go shows no handshake with the new key: {go_peer:?}"
        );
        println!(
            "ours as {}: no traffic after the key change; new handshake at {after} (was {before})",
            if ours == 0 { "initiator" } else { "responder" }
        );
        Ok(())
    };
    run().with_context(|| pair.diag())
}

#[test]
fn new_private_key_expires_sessions_ours_initiator() -> Result<()> {
    let env = setup!("xk");
    key_change_case(&env, 0)
}

#[test]
fn new_private_key_expires_sessions_ours_responder() -> Result<()> {
    let env = setup!("xr");
    key_change_case(&env, 1)
}

// ---------------------------------------------------------------------------------------
// 2. Deleting the UAPI socket file stops the daemon.

#[test]
fn deleting_the_uapi_socket_stops_the_daemon() -> Result<()> {
    let env = setup!("xs");
    let mut solo = Solo::rs_keyed(&env)?;
    let procs = RsProcesses::wait(&solo.d, Duration::from_secs(10))?;
    let tree = solo.d.process_tree();
    fs::remove_file(solo.d.socket())
        .with_context(|| format!("removing {}", solo.d.socket().display()))?;
    let removed = Instant::now();
    let Some(status) = solo.d.wait_exit(Duration::from_secs(3))? else {
        bail!(
            "the daemon still runs 3 s after its UAPI socket file was deleted:\n{}",
            solo.d.diag()
        );
    };
    let took = removed.elapsed();
    ensure!(
        status.success(),
        "the daemon exited with {status} after its socket file was deleted; log:\n{}",
        solo.d.log_tail(30)
    );
    let ifname = solo.d.ifname.clone();
    ensure!(
        wait_until(Duration::from_secs(2), || !link_exists(&solo.ns, &ifname)),
        "{ifname} still exists 2 s after the daemon exited"
    );
    ensure!(
        wait_until(Duration::from_secs(2), || !tree.iter().any(|p| alive(*p))),
        "processes of the daemon still alive: {:?} (tree was {tree:?}, {procs:?})",
        tree.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
    ensure!(
        !solo.d.socket().exists(),
        "{} came back",
        solo.d.socket().display()
    );
    println!(
        "socket file deleted: daemon exited ({status}) after {:.2} s; workers {:?} gone",
        took.as_secs_f64(),
        [procs.keyd, procs.spawner, procs.datad]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. Large configurations.

/// Ours (A) against wireguard-go (B), B knowing A's endpoint.
fn rs_against_go() -> PairSpec {
    PairSpec {
        a: Impl::Rs,
        b: Impl::Go,
        underlay: Underlay::V4,
        psk: false,
        b_knows_a: true,
    }
}

/// A prefix as `wg` prints it, parsed (so the comparison does not depend on how an IPv6
/// address is abbreviated).
fn parse_prefix(s: &str) -> Result<(IpAddr, u8)> {
    let (addr, len) = s
        .split_once('/')
        .with_context(|| format!("allowed IP {s:?} without a prefix length"))?;
    Ok((
        addr.parse()
            .with_context(|| format!("allowed IP {s:?}: address"))?,
        len.parse()
            .with_context(|| format!("allowed IP {s:?}: length"))?,
    ))
}

fn prefix_set<S: AsRef<str>>(list: &[S]) -> Result<BTreeSet<(IpAddr, u8)>> {
    list.iter().map(|s| parse_prefix(s.as_ref())).collect()
}

/// `n` distinct prefixes, IPv4 and IPv6 alternating, starting with B's tunnel addresses.
fn many_allowed_ips(n: usize) -> Vec<String> {
    let mut ips = vec![format!("{}/32", TUN4[1]), format!("{}/128", TUN6[1])];
    let mut i = 0usize;
    while ips.len() < n {
        if i.is_multiple_of(2) {
            let j = i / 2;
            ips.push(format!(
                "10.{}.{}.{}/32",
                128 + j / 65536,
                (j / 256) % 256,
                j % 256
            ));
        } else {
            // Some /64 networks among the host routes.
            let j = i / 2 + 1;
            if j.is_multiple_of(10) {
                ips.push(format!("fd99:{j:x}::/64"));
            } else {
                ips.push(format!("fd98::{j:x}/128"));
            }
        }
        i += 1;
    }
    ips
}

/// `[Interface]` of A as `Pair::new` configured it.
fn interface_section(pair: &Pair) -> String {
    format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {}\n",
        pair.ka.private, PORTS[0]
    )
}

/// `wg setconf` of `text` on `d` (written to a private file), timed.
fn setconf_large(env: &Env, d: &Daemon, text: &str) -> Result<Duration> {
    let file = env
        .dir
        .write_secret(&env.file_name("large", "conf"), text)?;
    let start = Instant::now();
    wg_long(d, &["setconf", &d.ifname, &file.to_string_lossy()], LARGE)
        .context("wg setconf of the large configuration")?;
    Ok(start.elapsed())
}

/// `wg show IF dump` of `d`, timed.
fn dump_large(d: &Daemon) -> Result<(Dump, Duration)> {
    let start = Instant::now();
    let text = wg_long(d, &["show", &d.ifname, "dump"], LARGE)?;
    Ok((Dump::parse(&text)?, start.elapsed()))
}

/// Nothing of ours died or restarted meanwhile.
fn same_processes(d: &Daemon, before: &RsProcesses) -> Result<()> {
    let now = RsProcesses::of(d)?;
    ensure!(
        now == *before,
        "the daemon's processes changed from {before:?} to {now:?} (a worker died and was \
         replaced)"
    );
    Ok(())
}

#[test]
fn one_peer_with_100000_allowed_ips() -> Result<()> {
    let env = setup!("xa");
    let pair = Pair::new(&env, rs_against_go())?;
    let d = &pair.a;
    let run = || -> Result<()> {
        ping_ok(&pair.hosts.a, TUN4[1], &[])?;
        let procs = RsProcesses::wait(d, Duration::from_secs(10))?;
        let ips = many_allowed_ips(MANY_ALLOWED_IPS);
        let mut text = interface_section(&pair);
        let _ = write!(
            text,
            "\n[Peer]\nPublicKey = {}\nEndpoint = {}\n",
            pair.kb.public,
            Underlay::V4.endpoint(1)
        );
        // 100 per line: wg(8) reads any line length, this keeps the file readable.
        for chunk in ips.chunks(100) {
            let _ = writeln!(text, "AllowedIPs = {}", chunk.join(", "));
        }
        let took = setconf_large(&env, d, &text)?;
        let (dump, dump_took) = dump_large(d)?;
        let peer = dump.peer(&pair.kb.public)?;
        let want = prefix_set(&ips)?;
        let got = prefix_set(&peer.allowed_ips)?;
        ensure!(
            got == want,
            "`wg show dump` lists {} allowed IPs ({} distinct), {} were set; {} missing, e.g. \
             {:?}",
            peer.allowed_ips.len(),
            got.len(),
            want.len(),
            want.difference(&got).count(),
            want.difference(&got).take(3).collect::<Vec<_>>()
        );
        ensure!(want.len() == MANY_ALLOWED_IPS, "the test made duplicates");
        same_processes(d, &procs)?;
        tunnel_works(&pair)?;
        same_processes(d, &procs)?;
        println!(
            "{} allowed IPs: setconf {:.1} s, show dump {:.1} s; tunnel works",
            got.len(),
            took.as_secs_f64(),
            dump_took.as_secs_f64()
        );
        Ok(())
    };
    run().with_context(|| format!("{}{}", d.log_tail(20), pair.b.diag()))
}

/// A peer public key made from `i` (32 pseudo-random bytes, base64).
fn fake_key(i: usize) -> String {
    let bytes = Blake2s256::digest(format!("wg-e2e containment fake peer {i}").as_bytes());
    base64(&bytes)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn ten_thousand_peers() -> Result<()> {
    let env = setup!("xp");
    let pair = Pair::new(&env, rs_against_go())?;
    let d = &pair.a;
    let run = || -> Result<()> {
        ensure!(
            wg_e2e::env::public_key(&base64(&[7u8; 32])).is_ok(),
            "the test's base64 encoding is not a key wg accepts"
        );
        ping_ok(&pair.hosts.a, TUN4[1], &[])?;
        let procs = RsProcesses::wait(d, Duration::from_secs(10))?;
        let mut text = interface_section(&pair);
        let _ = write!(
            text,
            "\n[Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = {}/32, {}/128\n",
            pair.kb.public,
            Underlay::V4.endpoint(1),
            TUN4[1],
            TUN6[1]
        );
        let mut keys = BTreeSet::from([pair.kb.public.clone()]);
        for i in 0..MANY_PEERS - 1 {
            let key = fake_key(i);
            // No endpoint: these peers never send anything.
            let _ = write!(
                text,
                "\n[Peer]\nPublicKey = {key}\nAllowedIPs = 10.200.{}.{}/32, fd97::{:x}/128\n",
                i / 256,
                i % 256,
                i + 1
            );
            keys.insert(key);
        }
        ensure!(keys.len() == MANY_PEERS, "the test made duplicate keys");
        let took = setconf_large(&env, d, &text)?;
        let (dump, dump_took) = dump_large(d)?;
        let got: BTreeSet<String> = dump.peers.iter().map(|p| p.public_key.clone()).collect();
        ensure!(
            got == keys && dump.peers.len() == MANY_PEERS,
            "`wg show dump` lists {} peers ({} of the {} set)",
            dump.peers.len(),
            got.intersection(&keys).count(),
            keys.len()
        );
        let real = dump.peer(&pair.kb.public)?;
        ensure!(
            prefix_set(&real.allowed_ips)?
                == prefix_set(&[format!("{}/32", TUN4[1]), format!("{}/128", TUN6[1])])?,
            "the real peer's allowed IPs are {:?}",
            real.allowed_ips
        );
        same_processes(d, &procs)?;
        tunnel_works(&pair)?;
        same_processes(d, &procs)?;
        println!(
            "{} peers: setconf {:.1} s, show dump {:.1} s; tunnel works",
            dump.peers.len(),
            took.as_secs_f64(),
            dump_took.as_secs_f64()
        );
        Ok(())
    };
    run().with_context(|| format!("{}{}", d.log_tail(20), pair.b.diag()))
}

// ---------------------------------------------------------------------------------------
// 4. Users and dumpability, from /proc.

/// The uid of `name`, or an error saying how to create it.
fn uid_of(name: &str) -> Result<u32> {
    let user = User::from_name(name)
        .with_context(|| format!("looking up user {name}"))?
        .with_context(|| {
            format!("user {name} does not exist: run `cargo xtask setup` (it creates it)")
        })?;
    Ok(user.uid.as_raw())
}

/// The group the spawner executes data planes with (`wg_sandbox::TRANSIENT_EXEC_GID`).
const TRANSIENT_EXEC_GID: u32 = 65534;

#[test]
fn workers_run_as_separate_dedicated_users_and_are_not_dumpable() -> Result<()> {
    let env = setup!("xu");
    let solo = Solo::rs_keyed(&env)?;
    let procs = RsProcesses::wait(&solo.d, Duration::from_secs(10))?;
    let mut failures = Vec::new();
    let mut uids = [0u32; 4];
    for (slot, (role, pid)) in procs.all().into_iter().enumerate() {
        let st = Status::read(pid)?;
        let ids = st.ids("Uid")?;
        uids[slot] = ids[0];
        println!("{:7} pid {pid}: {}", role.name(), st.summary());
        if role == Role::Monitor {
            continue;
        }
        if ids.iter().any(|&u| u != ids[0]) {
            failures.push(format!(
                "{} (pid {pid}) has mixed uids {ids:?}",
                role.name()
            ));
        }
        if ids[0] == 0 || ids[0] == NOBODY_UID {
            failures.push(format!(
                "{} (pid {pid}) runs as uid {} ({})",
                role.name(),
                ids[0],
                if ids[0] == 0 { "root" } else { "nobody" }
            ));
        }
        // The kernel makes root the owner of /proc/PID/* of a process that is not
        // dumpable; a dumpable one owns them itself.
        for file in ["mem", "status"] {
            let path = format!("/proc/{pid}/{file}");
            let owner = fs::metadata(&path)
                .with_context(|| format!("stat {path}"))?
                .uid();
            if owner != 0 {
                failures.push(format!(
                    "{path} of {} is owned by uid {owner}, not root: the process is dumpable",
                    role.name()
                ));
            }
        }
    }
    // How datad starts non-dumpable from its first instruction: the spawner keeps the
    // transient group (65534) as its saved group and executes datad with it as the real
    // group; datad's first step settles on its own group alone.
    let spawner_gids = Status::read(procs.spawner)?.ids("Gid")?;
    let datad_gids = Status::read(procs.datad)?.ids("Gid")?;
    if spawner_gids.get(2) != Some(&TRANSIENT_EXEC_GID)
        || spawner_gids.first() == Some(&TRANSIENT_EXEC_GID)
    {
        failures.push(format!(
            "the spawner's gids (real, effective, saved, fs) are {spawner_gids:?}: want its \
             own group with {TRANSIENT_EXEC_GID} as the saved one"
        ));
    }
    if datad_gids
        .iter()
        .any(|&g| g != datad_gids[0] || g == TRANSIENT_EXEC_GID)
    {
        failures.push(format!(
            "datad's gids are {datad_gids:?}: its first step must settle on its own group"
        ));
    }
    let [_, keyd, spawner, datad] = uids;
    if keyd == datad {
        failures.push(format!("keyd and datad share uid {keyd}"));
    }
    if spawner != datad {
        failures.push(format!(
            "the spawner runs as uid {spawner}, datad as {datad}: want datad's user"
        ));
    }
    match (uid_of(KEYD_USER), uid_of(DATAD_USER)) {
        (Ok(want_keyd), Ok(want_datad)) => {
            if keyd != want_keyd {
                failures.push(format!(
                    "keyd runs as uid {keyd}, want {KEYD_USER} ({want_keyd})"
                ));
            }
            if datad != want_datad {
                failures.push(format!(
                    "datad runs as uid {datad}, want {DATAD_USER} ({want_datad})"
                ));
            }
        }
        (a, b) => {
            for e in [a.err(), b.err()].into_iter().flatten() {
                failures.push(format!("{e:#}"));
            }
        }
    }
    solo.d.ensure_no_failures(&failures)
}

#[test]
fn a_missing_worker_user_is_a_clear_error() -> Result<()> {
    let env = setup!("xn");
    let ns = Namespace::create(&env.name("n")?)?;
    let mut failures = Vec::new();
    for (i, flag) in ["--datad-user", "--keyd-user", "--user"].iter().enumerate() {
        let ifname = env.name(&format!("w{i}"))?;
        let mut c = ns.command(
            &env.rs_bin().to_string_lossy(),
            &["-f", flag, NO_SUCH_USER, &ifname],
        );
        let out = cmd::output(&mut c, SHORT)
            .with_context(|| format!("`wireguard-rs -f {flag} {NO_SUCH_USER}` did not exit"))?;
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let lower = err.to_ascii_lowercase();
        println!("{flag} {NO_SUCH_USER}: {} {err:?}", out.status);
        if out.status.success() {
            failures.push(format!("{flag} {NO_SUCH_USER}: exited 0; stderr {err:?}"));
        } else if !err.contains(NO_SUCH_USER)
            || !lower.contains("user")
            || lower.contains("unexpected argument")
            || lower.contains("unknown argument")
        {
            failures.push(format!(
                "{flag} {NO_SUCH_USER}: the error does not name the missing user: {err:?}"
            ));
        }
        if link_exists(&ns, &ifname) {
            failures.push(format!("{flag}: interface {ifname} was left behind"));
        }
        let sock = wg_e2e::daemon::socket_path(&ifname);
        if sock.exists() {
            let _ = fs::remove_file(&sock);
            failures.push(format!("{flag}: {} was left behind", sock.display()));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 5. kill -9 of the monitor.

/// Workers of a daemon under test, killed by PID on drop if still alive (and still what
/// they were), so a failing case leaves nothing stopped behind.
struct WorkerGuard(Vec<(Role, u32)>);

impl WorkerGuard {
    fn left(&self) -> Vec<(Role, u32)> {
        self.0
            .iter()
            .copied()
            .filter(|&(role, pid)| alive(pid) && role_of(pid) == Some(role))
            .collect()
    }
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        for (_, pid) in self.left() {
            let _ = sigkill(pid);
        }
    }
}

/// `kill -9` of the monitor of a running daemon: every worker must be gone within 2 s.
#[test]
fn killing_the_monitor_leaves_no_worker() -> Result<()> {
    let env = setup!("xm");
    let mut solo = Solo::rs_keyed(&env)?;
    let procs = RsProcesses::wait(&solo.d, Duration::from_secs(10))?;
    let guard = WorkerGuard(vec![
        (Role::Keyd, procs.keyd),
        (Role::Spawner, procs.spawner),
        (Role::Datad, procs.datad),
    ]);
    sigkill(procs.monitor)?;
    let killed = Instant::now();
    let gone = wait_until(Duration::from_secs(2), || guard.left().is_empty());
    let took = killed.elapsed();
    let left = describe_left(&guard);
    let status = solo.d.wait_exit(Duration::from_secs(2))?;
    ensure!(
        gone,
        "2 s after kill -9 of the monitor (pid {}), workers are still alive: {left}",
        procs.monitor
    );
    let ifname = solo.d.ifname.clone();
    let if_gone = wait_until(Duration::from_secs(2), || !link_exists(&solo.ns, &ifname));
    println!(
        "monitor {} killed ({status:?}): keyd {}, spawner {}, datad {} gone after {:.2} s; \
         interface gone: {if_gone}",
        procs.monitor,
        procs.keyd,
        procs.spawner,
        procs.datad,
        took.as_secs_f64()
    );
    Ok(())
}

fn describe_left(guard: &WorkerGuard) -> String {
    guard
        .left()
        .into_iter()
        .map(|(role, pid)| {
            let uid = Status::read(pid)
                .and_then(|s| s.ids("Uid"))
                .map(|ids| ids[0].to_string())
                .unwrap_or_default();
            format!(
                "{} pid {pid} (state {}, uid {uid})",
                role.name(),
                state(pid).map_or_else(|| "gone".to_owned(), String::from)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `wireguard-rs -f IFNAME` as the child of a small Python wrapper that is a child
/// subreaper (`PR_SET_CHILD_SUBREAPER`) and reaps whatever ends up under it. Orphaned
/// workers are then re-parented to the wrapper, which shares their process group, so the
/// group never becomes an orphaned process group: the kernel's SIGHUP and SIGCONT for
/// stopped members of such a group cannot end (or wake) a stopped worker.
const SUBREAPER: &str = r#"
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
print("daemon", pid, flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"#;

/// The same with every worker stopped (SIGSTOP) before the monitor is killed: a stopped
/// worker cannot notice its closed channels, so only the kernel's parent-death signal
/// (`PR_SET_PDEATHSIG`, which a change of credentials clears) can end it. No worker may
/// rely on noticing the monitor's end itself.
#[test]
fn killing_the_monitor_leaves_no_worker_even_a_stopped_one() -> Result<()> {
    let env = setup!("xw");
    let ns = Namespace::create(&env.name("s")?)?;
    let ifname = env.name("ws")?;
    let python = cmd::find_on_path("python3").context("python3 not found")?;
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", ns.name()])
        .arg(&python)
        .args(["-c", SUBREAPER])
        .arg(env.rs_bin())
        .args(["-f", &ifname]);
    let log = env.dir.path().join(env.file_name(&ifname, "log"));
    let mut wrapper = wg_e2e::cmd::Background::spawn("subreaper wrapper", &mut c, Some(&log))?;
    let socket = wg_e2e::daemon::socket_path(&ifname);
    let _socket_guard = SocketGuard(socket.clone());
    let read_log = || fs::read_to_string(&log).unwrap_or_default();
    let ready = wait_until(Duration::from_secs(15), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    ensure!(
        ready,
        "the daemon under the wrapper did not answer on {} within 15 s; log:\n{}",
        socket.display(),
        read_log()
    );
    let monitor_pid = || -> Option<u32> {
        read_log()
            .lines()
            .find_map(|l| l.strip_prefix("daemon ")?.trim().parse().ok())
    };
    // The wrapper prints the line before the daemon answers, but the log may be read
    // while the line is half written.
    wait_until(Duration::from_secs(5), || monitor_pid().is_some());
    let monitor: u32 = monitor_pid().with_context(|| {
        format!(
            "the wrapper did not print the daemon's pid; log:\n{}",
            read_log()
        )
    })?;
    // The workers: the monitor's descendants, by role. The guard (which kills what it
    // holds when dropped) is made once they are all there: replacing a guard inside the
    // loop would kill the workers found by an earlier, incomplete look.
    // One of each (sorted by role): a data plane between fork and exec still looks like a
    // second spawner.
    let complete = |found: &[(Role, u32)]| {
        found
            .iter()
            .map(|&(r, _)| r)
            .eq([Role::Keyd, Role::Spawner, Role::Datad])
    };
    let mut found = Vec::new();
    wait_until(Duration::from_secs(10), || {
        found = descendants_by_role(monitor);
        complete(&found)
    });
    let guard = WorkerGuard(found);
    ensure!(
        complete(&guard.0),
        "expected keyd, spawner and datad under monitor {monitor}, found {:?}",
        guard.0
    );
    // Stopped once each has armed its parent-death signal, which it does first thing, before
    // its sandbox: a worker caught before that (between its exec and its first steps) would
    // outlive its parent while stopped, but it has not read anything yet either.
    let settled = wait_until(Duration::from_secs(10), || {
        guard.0.iter().all(|&(_, pid)| {
            wg_e2e::proc::Status::read(pid)
                .ok()
                .and_then(|s| s.get("Seccomp").ok().map(|v| v == "2"))
                .unwrap_or(false)
        })
    });
    ensure!(
        settled,
        "the workers did not all sandbox themselves: {}",
        describe_left(&guard)
    );
    for &(role, pid) in &guard.0 {
        let pid_t = i32::try_from(pid).context("pid out of range")?;
        kill(Pid::from_raw(pid_t), Signal::SIGSTOP)
            .with_context(|| format!("SIGSTOP to {} {pid}", role.name()))?;
    }
    let all_stopped = wait_until(Duration::from_secs(2), || {
        guard.0.iter().all(|&(_, pid)| state(pid) == Some('T'))
    });
    ensure!(
        all_stopped,
        "the workers did not all stop: {}; log:\n{}",
        describe_left(&guard),
        read_log()
    );
    sigkill(monitor)?;
    let killed = Instant::now();
    let gone = wait_until(Duration::from_secs(2), || guard.left().is_empty());
    let took = killed.elapsed();
    let left = describe_left(&guard);
    ensure!(
        gone,
        "2 s after kill -9 of the monitor (pid {monitor}) with its workers stopped, workers are \
         still alive: {left}; log:\n{}",
        read_log()
    );
    println!(
        "monitor {monitor} killed with its workers stopped: {:?} gone after {:.2} s",
        guard.0,
        took.as_secs_f64()
    );
    drop(guard);
    let _ = wrapper.wait_exit(Duration::from_secs(2));
    Ok(())
}

/// Removes a UAPI socket file left by a daemon that was killed.
struct SocketGuard(std::path::PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// (role, pid) of every wireguard-rs worker below `root` in the process tree.
fn descendants_by_role(root: u32) -> Vec<(Role, u32)> {
    let mut found: Vec<(Role, u32)> = wg_e2e::daemon::descendants(root)
        .into_iter()
        .filter_map(|pid| role_of(pid).map(|r| (r, pid)))
        .filter(|(r, _)| *r != Role::Monitor)
        .collect();
    found.sort_unstable();
    found
}

// ---------------------------------------------------------------------------------------
// 6. A data plane that lies about the interface.

/// The test hook's trigger: a FIFO holding one byte, in a directory others may traverse
/// (mode 0711), readable by the data plane's user (0644). The test holds the FIFO open
/// (read and write) so the byte stays until one data plane reads it. Removed on drop.
struct LieTrigger {
    /// Held for its removal on drop.
    _dir: PrivateDir,
    /// Keeps the FIFO's buffer (and the byte) alive.
    _fifo: fs::File,
    path: std::path::PathBuf,
}

impl LieTrigger {
    fn new(env: &Env) -> Result<Self> {
        let dir = PrivateDir::create(&format!("wg-e2e-{}-lie", env.names.prefix()))?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711))?;
        let path = dir.path().join("lie-once");
        let path_s = path.to_string_lossy().into_owned();
        cmd::checked(
            &mut cmd::command("mkfifo", &["-m", "0644", path_s.as_str()]),
            SHORT,
        )?;
        // Read and write: opening does not wait for a reader.
        let mut fifo = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {path_s}"))?;
        fifo.write_all(b"!")?;
        Ok(Self {
            _dir: dir,
            _fifo: fifo,
            path,
        })
    }
}

/// The data plane's own line when its test hook fires.
const HOOK_LINE: &str = "test hook: telling the monitor the interface is gone";

/// The pid in the monitor's "reported the interface gone" line, if the line is there.
fn liar_in_log(log: &str) -> Option<(String, Option<u32>)> {
    let line = log.lines().find(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("interface gone") && !l.contains("test hook")
    })?;
    let pid = line.split("pid ").nth(1).and_then(|rest| {
        rest.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    });
    Some((line.to_owned(), pid))
}

#[test]
fn a_data_plane_that_lies_about_the_interface_is_replaced() -> Result<()> {
    let env = setup!("xl");
    let bin = test_hooks_bin_dir()?;
    let hosts = two_hosts(&env)?;
    let (ka, kb) = (env.keys("a")?, env.keys("b")?);
    let trigger = LieTrigger::new(&env)?;
    let marker = trigger.path.to_string_lossy().into_owned();
    let mut a = Daemon::start_rs_with(
        &env,
        &hosts.a,
        &env.name("wa")?,
        &bin,
        &[(LIE_ENV, marker.as_str())],
        false,
    )?;
    let b = Daemon::start(&env, &hosts.b, Impl::Go, &env.name("wb")?)?;
    let mut run = || -> Result<()> {
        ensure!(
            wait_until(Duration::from_secs(15), || a.log().contains(HOOK_LINE)),
            "no data plane ran the test hook (trigger {marker}) within 15 s: is the daemon \
             built with wg-datad/test-hooks?; log:\n{}",
            a.log_tail(30)
        );
        // The monitor's verdict on the claim.
        let mut verdict = None;
        wait_until(Duration::from_secs(10), || {
            verdict = liar_in_log(&a.log());
            verdict.is_some() || a.poll_exit().ok().flatten().is_some()
        });
        if let Some(status) = a.poll_exit()? {
            bail!(
                "the daemon exited ({status}) after its data plane falsely reported the \
                 interface gone; log:\n{}",
                a.log_tail(30)
            );
        }
        let (line, liar) = verdict.with_context(|| {
            format!(
                "the monitor logged nothing about the data plane's false report within 10 s; \
                 log:\n{}",
                a.log_tail(30)
            )
        })?;
        let liar = liar.with_context(|| format!("no pid in the monitor's line {line:?}"))?;
        let mut procs = None;
        wait_until(Duration::from_secs(10), || {
            procs = RsProcesses::of(&a).ok().filter(|p| p.datad != liar);
            procs.is_some()
        });
        let procs = procs.with_context(|| {
            format!(
                "no new data plane replaced the lying one (pid {liar}) within 10 s; tree: {:?}; \
                 log:\n{}",
                a.process_tree(),
                a.log_tail(30)
            )
        })?;
        ensure!(!alive(liar), "the lying data plane (pid {liar}) still runs");
        configure(&a, &hosts.a, 0, &ka, &kb.public, true)?;
        configure(&b, &hosts.b, 1, &kb, &ka.public, true)?;
        ping_ok(&hosts.a, TUN4[1], &[])?;
        ping_ok(&hosts.a, TUN6[1], &[])?;
        ping_ok(&hosts.b, TUN4[0], &[])?;
        ensure!(
            a.poll_exit()?.is_none() && link_exists(&hosts.a, &a.ifname),
            "the daemon or its interface is gone"
        );
        let now = RsProcesses::of(&a)?;
        ensure!(
            now == procs,
            "processes changed again after the replacement: {procs:?} -> {now:?}"
        );
        println!(
            "lying data plane {liar} replaced by {}; monitor said: {}",
            procs.datad,
            line.trim()
        );
        Ok(())
    };
    let r = run();
    r.with_context(|| format!("{}{}", a.diag(), b.diag()))
}

// ---------------------------------------------------------------------------------------
// 7. The UAPI socket refuses the workers' users.

/// Sets the permission bits of a path and puts the old ones back on drop, also when the
/// test fails.
struct ModeGuard {
    path: PathBuf,
    old: u32,
}

impl ModeGuard {
    fn set(path: &Path, mode: u32) -> Result<Self> {
        let old = fs::metadata(path)
            .with_context(|| format!("stat {}", path.display()))?
            .permissions()
            .mode()
            & 0o7777;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            old,
        })
    }
}

impl Drop for ModeGuard {
    fn drop(&mut self) {
        let _ = fs::set_permissions(&self.path, fs::Permissions::from_mode(self.old));
    }
}

/// keyd checks who connects (SO_PEERCRED): root and the user who started the daemon (root
/// here) are served, keyd's and datad's users never, even where the file permissions of
/// the socket and its directory were weakened so that they can connect. keyd closes such a
/// connection without an answer and logs it, and goes on serving root.
#[test]
fn the_uapi_socket_refuses_the_workers_users() -> Result<()> {
    let env = setup!("xc");
    let solo = Solo::rs_keyed(&env)?;
    let d = &solo.d;
    let procs = RsProcesses::wait(d, Duration::from_secs(10))?;
    let show = ["show", d.ifname.as_str()];
    let before = d.wg(&show).context("`wg show` as root")?;
    // The directory is shared by every test: both modes are put back on drop (the
    // socket's first), also when this test fails.
    let _dir = ModeGuard::set(Path::new(SOCKET_DIR), 0o711)?;
    let _socket = ModeGuard::set(d.socket(), 0o666)?;
    let mut failures = Vec::new();
    for user in [DATAD_USER, KEYD_USER] {
        let uid = uid_of(user)?;
        let mut c = solo
            .ns
            .command("runuser", &["-u", user, "--", "wg", "show", &d.ifname]);
        let out = cmd::output(&mut c, SHORT)?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        println!(
            "`wg show` as {user} (uid {uid}): {}, {} bytes of output, stderr {stderr:?}",
            out.status,
            out.stdout.len()
        );
        if out.status.success() || !out.stdout.is_empty() {
            failures.push(format!(
                "`wg show` as {user} (uid {uid}) was answered ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        // The line shows that the client reached keyd (the weakened permissions let it
        // connect) and that keyd, not the file system, refused it.
        let refused = format!("UAPI client with uid {uid} refused");
        if !wait_until(Duration::from_secs(2), || d.log().contains(&refused)) {
            failures.push(format!(
                "no {refused:?} in the daemon's log after `wg show` as {user}"
            ));
        }
    }
    match d.wg(&show) {
        Ok(after) if after == before => println!("`wg show` as root still answered"),
        Ok(after) => failures.push(format!(
            "`wg show` as root answered differently after the refused clients:\n{after}\n\
             before:\n{before}"
        )),
        Err(e) => failures.push(format!(
            "`wg show` as root after the refused clients: {e:#}"
        )),
    }
    same_processes(d, &procs)?;
    d.ensure_no_failures(&failures)
}

#[test]
fn test_helpers() -> Result<()> {
    ensure!(base64(&[0, 1, 2, 3]) == "AAECAw==");
    ensure!(base64(b"abc") == "YWJj");
    ensure!(base64(b"ab") == "YWI=");
    let ips = many_allowed_ips(MANY_ALLOWED_IPS);
    ensure!(prefix_set(&ips)?.len() == MANY_ALLOWED_IPS);
    ensure!(
        liar_in_log("x WARN data plane (pid 42) reported the interface gone, but it exists")
            .and_then(|(_, p)| p)
            == Some(42)
    );
    Ok(())
}
