//! Hostile input on the UDP port: random datagrams, every message type at and around its
//! size, handshake messages with a valid MAC1 (so they reach the key process), and
//! truncations and bit flips of a real handshake initiation. Nothing may crash (no worker
//! restarted) and the tunnel must keep working, including new handshakes.
//! (Malformed UAPI requests are in `uapi.rs`.)
// Linux only: network namespaces and the Linux daemon.
#![cfg(target_os = "linux")]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use wg_e2e::net::wait_for_line;
use wg_e2e::topo::{PORTS, TUN4, TUN6, UNDER4};
use wg_e2e::{Pair, PairSpec, cmd, ping, ping_ok, setup};

/// Random datagrams of random length 0..=1500.
const RANDOM_DATAGRAMS: u32 = 5000;

#[test]
fn random_and_truncated_datagrams_do_no_harm() -> Result<()> {
    let env = setup!("fz");
    let pair = Pair::new(&env, PairSpec::rs())?;
    let (ha, hb) = (&pair.hosts.a, &pair.hosts.b);
    let run = || -> Result<()> {
        ping_ok(ha, TUN4[1], &[])?;
        ping_ok(hb, TUN4[0], &[])?;
        let tree = pair.a.process_tree();
        ensure!(
            tree.len() >= 3,
            "expected monitor, keyd and datad, found {tree:?}"
        );
        let handshake0 = pair.a.dump()?.peer(&pair.kb.public)?.latest_handshake;

        // The fuzzer sits in B on a second address and poses as the endpoint of a peer
        // of A that does not exist elsewhere, so it can capture A's real initiation.
        let fuzz_addr = "10.203.0.3";
        hb.ip(&[
            "addr",
            "add",
            &format!("{fuzz_addr}/24"),
            "dev",
            &env.name("vb")?,
        ])?;
        let fake = env.keys("f")?;
        pair.a.set(&[
            "peer",
            &fake.public,
            "allowed-ips",
            "10.77.9.9/32",
            "endpoint",
            &format!("{fuzz_addr}:40000"),
        ])?;
        ha.ip(&["route", "add", "10.77.9.9/32", "dev", &pair.a.ifname])?;
        let helper = env.helper.to_string_lossy().into_owned();
        let log = env.dir.path().join(env.file_name("fuzz", "log"));
        let mut fuzzer = cmd::Background::spawn(
            "udp fuzzer",
            &mut hb.command(
                &helper,
                &[
                    "udp-fuzz",
                    &format!("{fuzz_addr}:40000"),
                    &format!("{}:{}", UNDER4[0], PORTS[0]),
                    &RANDOM_DATAGRAMS.to_string(),
                    &std::process::id().to_string(),
                    &pair.ka.public,
                    "10",
                ],
            ),
            Some(&log),
        )?;
        wait_for_line(&mut fuzzer, "ready", Duration::from_secs(10))?;
        // A packet for the fake peer makes A send it a handshake initiation.
        let _ = ping(ha, "10.77.9.9", 1, 1, &[])?;
        let status = fuzzer
            .wait_exit(Duration::from_secs(90))?
            .context("the fuzzer did not finish within 90 s")?;
        let summary = fuzzer.log_tail(3);
        ensure!(status.success(), "fuzzer failed ({status}): {summary}");
        println!("{summary}");
        ensure!(
            summary.contains("captured=true"),
            "wireguard-rs sent no handshake initiation to a configured peer's endpoint: {summary}"
        );
        let sent: u64 = summary
            .split_whitespace()
            .find_map(|w| w.strip_prefix("sent="))
            .and_then(|n| n.parse().ok())
            .context("no sent= in the fuzzer's summary")?;
        ensure!(
            sent >= u64::from(RANDOM_DATAGRAMS),
            "the fuzzer sent only {sent} datagrams"
        );

        // Nothing crashed or restarted.
        let after = pair.a.process_tree();
        ensure!(
            after == tree,
            "process tree changed from {tree:?} to {after:?}: a worker died and was restarted"
        );
        // The tunnel still works both ways, on both address families ...
        ping_ok(ha, TUN4[1], &[])?;
        ping_ok(hb, TUN6[0], &[])?;
        // ... and a fresh handshake (B forgets A and initiates) still completes.
        std::thread::sleep(Duration::from_millis(1100));
        pair.b.set(&["peer", &pair.ka.public, "remove"])?;
        pair.b.set(&[
            "peer",
            &pair.ka.public,
            "allowed-ips",
            &format!("{}/32,{}/128", TUN4[0], TUN6[0]),
            "endpoint",
            &format!("{}:{}", UNDER4[0], PORTS[0]),
        ])?;
        ping_ok(hb, TUN4[0], &[])?;
        let handshake1 = pair.a.dump()?.peer(&pair.kb.public)?.latest_handshake;
        ensure!(
            handshake1 > handshake0,
            "no new handshake after the fuzzing: latest handshake {handshake0} -> {handshake1}"
        );
        ensure!(
            pair.a.process_tree() == tree,
            "a worker was restarted during the new handshake"
        );
        let log = pair.a.log().to_ascii_lowercase();
        ensure!(!log.contains("panick"), "the daemon's log shows a panic");
        Ok(())
    };
    run().with_context(|| pair.diag())
}
