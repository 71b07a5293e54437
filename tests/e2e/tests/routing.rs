//! Cryptokey routing and peer state on wireguard-rs ↔ wireguard-rs tunnels: counters and
//! handshake times, removing a peer, moving an allowed IP, source filtering, roaming, and
//! a refused listen-port change.
// Linux only: network namespaces and the Linux daemon.
#![cfg(target_os = "linux")]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use wg_e2e::daemon::Daemon;
use wg_e2e::net::wait_for_line;
use wg_e2e::topo::{PORTS, TUN4, TUN6, UNDER4, address_tunnel};
use wg_e2e::{
    Impl, Namespace, Pair, PairSpec, VethPair, cmd, link_stats, ping, ping_fails, ping_ok, setup,
};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// B forgets A and learns it again, then pings: B initiates a fresh handshake.
fn rehandshake_from_b(pair: &Pair) -> Result<()> {
    pair.b.set(&["peer", &pair.ka.public, "remove"])?;
    let allowed = format!("{}/32,{}/128", TUN4[0], TUN6[0]);
    let endpoint = pair.spec.underlay.endpoint(0);
    let mut args = vec!["peer", pair.ka.public.as_str(), "allowed-ips", &allowed];
    args.extend(["endpoint", endpoint.as_str()]);
    pair.b.set(&args)?;
    ping_ok(&pair.hosts.b, TUN4[0], &[])?;
    Ok(())
}

#[test]
fn dump_counters_and_latest_handshake_move_with_traffic() -> Result<()> {
    let env = setup!("ct");
    let pair = Pair::new(&env, PairSpec::rs())?;
    let run = || -> Result<()> {
        let fresh = pair.a.dump()?;
        let p = fresh.peer(&pair.kb.public)?;
        ensure!(
            (p.latest_handshake, p.rx, p.tx) == (0, 0, 0),
            "before any traffic: handshake {}, rx {}, tx {} (want all 0)",
            p.latest_handshake,
            p.rx,
            p.tx
        );
        let t0 = now();
        ping_ok(&pair.hosts.a, TUN4[1], &[])?;
        let d1 = pair.a.dump()?;
        let p1 = d1.peer(&pair.kb.public)?.clone();
        ensure!(
            p1.latest_handshake >= t0.saturating_sub(2) && p1.latest_handshake <= now() + 2,
            "latest handshake {} is not about now ({t0})",
            p1.latest_handshake
        );
        ensure!(
            p1.rx > 0 && p1.tx > 0,
            "no traffic counted: rx {} tx {}",
            p1.rx,
            p1.tx
        );

        // 20 pings with 1000-byte payloads: each way at least 20 × 1000 more bytes.
        let s = ping(&pair.hosts.a, TUN4[1], 20, 2, &["-s", "1000", "-i", "0.02"])?;
        ensure!(s.received == 20, "big pings: {s}");
        let d2 = pair.a.dump()?;
        let p2 = d2.peer(&pair.kb.public)?;
        ensure!(
            p2.tx >= p1.tx + 20_000 && p2.rx >= p1.rx + 20_000,
            "counters after 20 × 1000-byte pings: rx {} -> {}, tx {} -> {}",
            p1.rx,
            p2.rx,
            p1.tx,
            p2.tx
        );
        ensure!(
            p2.latest_handshake == p1.latest_handshake,
            "latest handshake changed without a new handshake: {} -> {}",
            p1.latest_handshake,
            p2.latest_handshake
        );

        // A new handshake (B forgets A and initiates) moves A's latest handshake.
        std::thread::sleep(Duration::from_millis(1100));
        rehandshake_from_b(&pair)?;
        let p3 = pair.a.dump()?.peer(&pair.kb.public)?.clone();
        ensure!(
            p3.latest_handshake > p1.latest_handshake,
            "latest handshake did not move after a new handshake: {} -> {}",
            p1.latest_handshake,
            p3.latest_handshake
        );
        ensure!(
            p3.rx > p2.rx && p3.tx > p2.tx,
            "counters did not grow: rx {} -> {}, tx {} -> {}",
            p2.rx,
            p3.rx,
            p2.tx,
            p3.tx
        );
        Ok(())
    };
    run().with_context(|| pair.diag())
}

/// The kernel and wireguard-go count every message from and to a peer, handshakes
/// included, so one side's `transfer: … sent` equals the other side's `… received` on a
/// lossless link. wireguard-go (B) is the reference here.
#[test]
fn transfer_counters_count_handshake_messages_like_wireguard_go() -> Result<()> {
    let env = setup!("cg");
    for (a, b) in [(Impl::Rs, Impl::Go), (Impl::Go, Impl::Rs)] {
        let pair = Pair::new(
            &env,
            PairSpec {
                a,
                b,
                ..PairSpec::rs()
            },
        )?;
        ping_ok(&pair.hosts.a, TUN4[1], &[]).with_context(|| pair.diag())?;
        // Let the last reply settle; nothing else is on the wire for 10 s (no keepalive).
        std::thread::sleep(Duration::from_millis(300));
        let pa = pair.a.dump()?.peer(&pair.kb.public)?.clone();
        let pb = pair.b.dump()?.peer(&pair.ka.public)?.clone();
        ensure!(
            pa.tx == pb.rx && pa.rx == pb.tx,
            "{} (A) -> {} (B), after one handshake (A initiates) and 5 pings: A counts tx {} rx {}, \
             B counts rx {} tx {}; they must agree (a 148-byte initiation or 92-byte response \
             missing on one side means received handshake messages are not counted)",
            a.name(),
            b.name(),
            pa.tx,
            pa.rx,
            pb.rx,
            pb.tx
        );
    }
    Ok(())
}

#[test]
fn removing_a_peer_cuts_it_off() -> Result<()> {
    let env = setup!("rm");
    let pair = Pair::new(&env, PairSpec::rs())?;
    let run = || -> Result<()> {
        ping_ok(&pair.hosts.a, TUN4[1], &[])?;
        ping_ok(&pair.hosts.b, TUN4[0], &[])?;
        pair.a.set(&["peer", &pair.kb.public, "remove"])?;
        let peers = pair.a.wg(&["show", &pair.a.ifname, "peers"])?;
        ensure!(
            peers.trim().is_empty(),
            "peer still listed after remove: {peers}"
        );
        ping_fails(&pair.hosts.a, TUN4[1], &[])?;
        ping_fails(&pair.hosts.b, TUN4[0], &[])?;
        ping_fails(&pair.hosts.b, TUN6[0], &[])?;
        // Control: adding it back (with its endpoint) restores the tunnel.
        let allowed = format!("{}/32,{}/128", TUN4[1], TUN6[1]);
        pair.a.set(&[
            "peer",
            &pair.kb.public,
            "allowed-ips",
            &allowed,
            "endpoint",
            &pair.spec.underlay.endpoint(1),
        ])?;
        ping_ok(&pair.hosts.a, TUN4[1], &[])?;
        Ok(())
    };
    run().with_context(|| pair.diag())
}

/// Bytes sent to each of two peers, from A's dump.
fn tx_of(d: &Daemon, keys: [&str; 2]) -> Result<[u64; 2]> {
    let dump = d.dump()?;
    Ok([dump.peer(keys[0])?.tx, dump.peer(keys[1])?.tx])
}

#[test]
fn allowed_ip_moved_to_another_peer_takes_its_traffic() -> Result<()> {
    let env = setup!("mv");
    // A hub with two spokes B and C on separate veth links; 10.77.0.100 is configured on
    // both spokes' tunnel interfaces, and A routes it to whichever peer holds it.
    let a = Namespace::create(&env.name("a")?)?;
    let b = Namespace::create(&env.name("b")?)?;
    let c = Namespace::create(&env.name("c")?)?;
    let _ab = VethPair::create(&a, &env.name("ab")?, &b, &env.name("ba")?)?;
    let _ac = VethPair::create(&a, &env.name("ac")?, &c, &env.name("ca")?)?;
    a.address_up(&env.name("ab")?, "10.203.0.1/24")?;
    b.address_up(&env.name("ba")?, "10.203.0.2/24")?;
    a.address_up(&env.name("ac")?, "10.203.1.1/24")?;
    c.address_up(&env.name("ca")?, "10.203.1.2/24")?;
    let (ka, kb, kc) = (env.keys("a")?, env.keys("b")?, env.keys("c")?);
    let da = Daemon::start(&env, &a, Impl::Rs, &env.name("wa")?)?;
    let db = Daemon::start(&env, &b, Impl::Rs, &env.name("wb")?)?;
    let dc = Daemon::start(&env, &c, Impl::Rs, &env.name("wc")?)?;
    let diag = || format!("{}{}{}", da.diag(), db.diag(), dc.diag());
    let moving = "10.77.0.100";
    let run = || -> Result<()> {
        da.set(&[
            "private-key",
            &ka.file.to_string_lossy(),
            "listen-port",
            "51820",
            "peer",
            &kb.public,
            "allowed-ips",
            &format!("10.77.0.2/32,{moving}/32"),
            "endpoint",
            "10.203.0.2:51821",
            "peer",
            &kc.public,
            "allowed-ips",
            "10.77.0.3/32",
            "endpoint",
            "10.203.1.2:51822",
        ])?;
        for (d, ns, k, port, ip, hub) in [
            (&db, &b, &kb, "51821", "10.77.0.2", "10.203.0.1:51820"),
            (&dc, &c, &kc, "51822", "10.77.0.3", "10.203.1.1:51820"),
        ] {
            d.set(&[
                "private-key",
                &k.file.to_string_lossy(),
                "listen-port",
                port,
                "peer",
                &ka.public,
                "allowed-ips",
                "10.77.0.0/24",
                "endpoint",
                hub,
            ])?;
            address_tunnel(ns, &d.ifname, ip, &format!("fd77::{}", &ip[8..]))?;
            ns.ip(&["addr", "add", &format!("{moving}/32"), "dev", &d.ifname])?;
        }
        address_tunnel(&a, &da.ifname, "10.77.0.1", "fd77::1")?;
        ping_ok(&a, "10.77.0.2", &[])?;
        ping_ok(&a, "10.77.0.3", &[])?;
        let keys = [kb.public.as_str(), kc.public.as_str()];

        // Before: A's traffic to .100 goes to B, and B may send from .100.
        let t0 = tx_of(&da, keys)?;
        ping_ok(&a, moving, &[])?;
        let t1 = tx_of(&da, keys)?;
        ensure!(
            t1[0] >= t0[0] + 4 * 100 && t1[1] <= t0[1] + 64,
            "before the move, pings to {moving} should go to B: tx to B {} -> {}, to C {} -> {}",
            t0[0],
            t1[0],
            t0[1],
            t1[1]
        );
        ping_ok(&b, "10.77.0.1", &["-I", moving])?;

        // Move it to C.
        da.set(&[
            "peer",
            &kc.public,
            "allowed-ips",
            &format!("10.77.0.3/32,{moving}/32"),
        ])?;
        let dump = da.dump()?;
        let (pb, pc) = (dump.peer(keys[0])?, dump.peer(keys[1])?);
        ensure!(
            pb.allowed_ips == ["10.77.0.2/32"]
                && pc.allowed_ips.iter().any(|i| i == "10.77.0.100/32"),
            "after the move: B has {:?}, C has {:?}",
            pb.allowed_ips,
            pc.allowed_ips
        );
        let t2 = tx_of(&da, keys)?;
        ping_ok(&a, moving, &[])?;
        let t3 = tx_of(&da, keys)?;
        ensure!(
            t3[1] >= t2[1] + 4 * 100 && t3[0] <= t2[0] + 64,
            "after the move, pings to {moving} should go to C: tx to B {} -> {}, to C {} -> {}",
            t2[0],
            t3[0],
            t2[1],
            t3[1]
        );
        ping_ok(&c, "10.77.0.1", &["-I", moving])?;
        // B no longer owns the address: A drops what B sends from it.
        ping_fails(&b, "10.77.0.1", &["-I", moving])?;
        ping_ok(&b, "10.77.0.1", &[])?;
        Ok(())
    };
    run().with_context(diag)
}

#[test]
fn packets_from_outside_the_peers_allowed_ips_are_dropped() -> Result<()> {
    let env = setup!("sp");
    let pair = Pair::new(&env, PairSpec::rs())?;
    let (ha, hb) = (&pair.hosts.a, &pair.hosts.b);
    let run = || -> Result<()> {
        // B gets a second address that is not in A's allowed IPs for B.
        hb.ip(&["addr", "add", "10.77.0.99/32", "dev", &pair.b.ifname])?;
        hb.ip(&[
            "addr",
            "add",
            "fd77::99/128",
            "dev",
            &pair.b.ifname,
            "nodad",
        ])?;
        ping_ok(hb, TUN4[0], &["-I", TUN4[1]])?;
        ping_ok(hb, TUN6[0], &["-I", TUN6[1]])?;
        for (src, dst) in [("10.77.0.99", TUN4[0]), ("fd77::99", TUN6[0])] {
            let (rx0, _) = link_stats(ha, &pair.a.ifname)?;
            let wg_rx0 = pair.a.dump()?.peer(&pair.kb.public)?.rx;
            ping_fails(hb, dst, &["-I", src])?;
            let (rx1, _) = link_stats(ha, &pair.a.ifname)?;
            let wg_rx1 = pair.a.dump()?.peer(&pair.kb.public)?.rx;
            // The packets did arrive (A decrypted them) ...
            ensure!(
                wg_rx1 >= wg_rx0 + 3 * 64,
                "A's daemon did not receive B's packets from {src} (rx {wg_rx0} -> {wg_rx1}): the test proves nothing"
            );
            // ... but none reached A's interface.
            ensure!(
                rx1 == rx0,
                "A's daemon delivered {} packet(s) from {src}, outside B's allowed IPs, to its interface",
                rx1 - rx0
            );
        }
        // Control: the same path from B's own address is delivered.
        let (rx0, _) = link_stats(ha, &pair.a.ifname)?;
        ping_ok(hb, TUN6[0], &["-I", TUN6[1]])?;
        let (rx1, _) = link_stats(ha, &pair.a.ifname)?;
        ensure!(
            rx1 >= rx0 + 4,
            "allowed packets not counted on A's interface: {rx0} -> {rx1}"
        );
        Ok(())
    };
    run().with_context(|| pair.diag())
}

#[test]
fn roaming_client_keeps_its_tunnel_and_the_server_follows() -> Result<()> {
    let env = setup!("ro");
    // A is the client (it knows B's endpoint), B the server (it learns A's).
    let spec = PairSpec {
        b_knows_a: false,
        ..PairSpec::rs()
    };
    let pair = Pair::new(&env, spec)?;
    let (ha, hb) = (&pair.hosts.a, &pair.hosts.b);
    let va = env.name("va")?;
    let endpoint_at_b =
        || -> Result<Option<String>> { Ok(pair.b.dump()?.peer(&pair.ka.public)?.endpoint.clone()) };
    let run = || -> Result<()> {
        ping_ok(ha, TUN4[1], &[])?;
        let e0 = endpoint_at_b()?;
        ensure!(
            e0.as_deref() == Some(&format!("{}:{}", UNDER4[0], PORTS[0])[..]),
            "server sees the client at {e0:?}"
        );
        // The client moves to another IPv4 address.
        ha.ip(&["addr", "del", &format!("{}/24", UNDER4[0]), "dev", &va])?;
        ha.ip(&["addr", "add", "10.203.0.5/24", "dev", &va])?;
        ping_ok(ha, TUN4[1], &[]).context("client -> server after moving to 10.203.0.5")?;
        let e1 = endpoint_at_b()?;
        ensure!(
            e1.as_deref() == Some(&format!("10.203.0.5:{}", PORTS[0])[..]),
            "after the client moved to 10.203.0.5 the server still sees {e1:?}"
        );
        ping_ok(hb, TUN4[0], &[]).context("server -> client at its new address")?;
        // The client moves to the IPv6 underlay (it is told the server's IPv6 endpoint).
        pair.a.set(&[
            "peer",
            &pair.kb.public,
            "endpoint",
            &format!("[fd03::2]:{}", PORTS[1]),
        ])?;
        ha.ip(&["addr", "del", "10.203.0.5/24", "dev", &va])?;
        ping_ok(ha, TUN6[1], &[]).context("client -> server over the IPv6 underlay")?;
        let e2 = endpoint_at_b()?;
        ensure!(
            e2.as_deref() == Some(&format!("[fd03::1]:{}", PORTS[0])[..]),
            "after the client moved to IPv6 the server still sees {e2:?}"
        );
        ping_ok(hb, TUN4[0], &[]).context("server -> client over IPv6")?;
        Ok(())
    };
    run().with_context(|| pair.diag())
}

#[test]
fn listen_port_change_to_a_taken_port_fails_and_the_old_port_keeps_working() -> Result<()> {
    let env = setup!("lp");
    let pair = Pair::new(&env, PairSpec::rs())?;
    let ha = &pair.hosts.a;
    let run = || -> Result<()> {
        ping_ok(ha, TUN4[1], &[])?;
        // Something else holds UDP 51900 in A's namespace.
        let log = env.dir.path().join(env.file_name("hold", "log"));
        let helper = env.helper.to_string_lossy().into_owned();
        let mut holder = cmd::Background::spawn(
            "udp holder",
            &mut ha.command(&helper, &["udp-hold", "0.0.0.0", "51900", "60"]),
            Some(&log),
        )?;
        wait_for_line(&mut holder, "holding", Duration::from_secs(10))?;
        let out = pair
            .a
            .wg_output(&["set", &pair.a.ifname, "listen-port", "51900"])?;
        ensure!(
            !out.status.success(),
            "`wg set listen-port 51900` succeeded although the port is taken"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            err.contains("Address already in use"),
            "`wg set listen-port` to a taken port should report EADDRINUSE, said: {err}"
        );
        let port = pair.a.wg(&["show", &pair.a.ifname, "listen-port"])?;
        ensure!(
            port.trim() == PORTS[0].to_string(),
            "`wg show listen-port` says {} after the failed change (want {})",
            port.trim(),
            PORTS[0]
        );
        ping_ok(ha, TUN4[1], &[])?;
        ping_ok(&pair.hosts.b, TUN6[0], &[])?;
        // The old port still takes new handshakes.
        rehandshake_from_b(&pair)?;
        // And a free port still works afterwards.
        pair.a.set(&["listen-port", "51901"])?;
        ensure!(
            pair.a.dump()?.listen_port == 51901,
            "listen port not changed to 51901"
        );
        drop(holder);
        Ok(())
    };
    run().with_context(|| pair.diag())
}

/// Persistent keepalive (wg(8): one authenticated empty packet every N seconds with no
/// other traffic): with N = 1 an idle tunnel carries a keepalive about every second, so
/// the data plane's timer keeps firing and re-arming on its own.
#[test]
fn persistent_keepalive_sends_on_an_idle_tunnel() -> Result<()> {
    let env = setup!("pka");
    let pair = Pair::new(&env, PairSpec::rs())?;
    let run = || -> Result<()> {
        ping_ok(&pair.hosts.a, TUN4[1], &[])?;
        pair.a
            .set(&["peer", &pair.kb.public, "persistent-keepalive", "1"])?;
        let rx = |d: &Daemon, key: &str| -> Result<u64> { Ok(d.dump()?.peer(key)?.rx) };
        let before = rx(&pair.b, &pair.ka.public)?;
        std::thread::sleep(Duration::from_millis(3500));
        let after = rx(&pair.b, &pair.ka.public)?;
        // A keepalive is a 32-byte transport message; allow for timer slack.
        let keepalives = (after - before) / 32;
        ensure!(
            (2..=5).contains(&keepalives),
            "B received {} bytes from idle A in 3.5 s with persistent-keepalive 1: \
             {keepalives} keepalives, expected about 3",
            after - before
        );
        Ok(())
    };
    run().with_context(|| pair.diag())
}
