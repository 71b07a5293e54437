//! The data plane pads to the TUN's *current* MTU: the monitor tells it the MTU after its
//! start and whenever it changes (`MonitorToDatad::Mtu`), as `wg-quick` sets the MTU only
//! after the daemon started.
//!
//! WireGuard pads a packet's plaintext to a multiple of 16 bytes, but never beyond the
//! MTU. One 1281-byte IPv4 packet (an odd MTU, and still at least IPv6's 1280) through an
//! interface whose MTU is 1281 is therefore sent unpadded: a transport message of
//! 1281 + 32 bytes (16 of header, 16 of tag). A data plane still believing in 1420 would
//! pad it to 1296, a message of 1328 bytes. The receiving peer, wireguard-go, counts
//! exactly the message length of each transport message in its rx counter (the plaintext
//! plus 32), so its counter grows by 1313, not 1328.
// Linux only: network namespaces and the Linux daemon.
#![cfg(target_os = "linux")]

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use wg_e2e::embedded::Embedded;
use wg_e2e::net::link_mtu;
use wg_e2e::proc::{RsProcesses, sigkill};
use wg_e2e::topo::{PORTS, TUN4, TUN6, UNDER4, address_tunnel, two_hosts};
use wg_e2e::{Dump, Impl, Namespace, Pair, PairSpec, Underlay, ping, ping_ok, setup, wait_until};

/// The MTU set on our interface after the start.
const MTU: u32 = 1281;
/// ICMP payload of an IPv4 echo request of exactly [`MTU`] bytes (20 IP + 8 ICMP header).
const PAYLOAD: u32 = MTU - 28;
/// WireGuard's transport header (type, receiver index, counter) plus the AEAD tag.
const OVERHEAD: u64 = 32;
/// A keepalive: an empty transport message.
const KEEPALIVE: u64 = OVERHEAD;
/// Longer than the monitor's one-second poll of the interface.
const POLL_WAIT: Duration = Duration::from_millis(2500);

/// What one echo request of `len` bytes adds to the receiver's rx counter with the data
/// plane's MTU at `mtu`: the plaintext padded to a multiple of 16, capped at the MTU.
fn message_len(len: u64, mtu: u64) -> u64 {
    len.next_multiple_of(16).min(mtu.max(len)) + OVERHEAD
}

/// Sends exactly one `MTU`-byte echo request from A (in `from`, don't fragment) to B and
/// returns how much B's rx counter for A grew (`rx`), and A's tx counter for B (`tx`).
fn one_packet(
    from: &Namespace,
    rx: impl Fn() -> Result<u64>,
    tx: impl Fn() -> Result<u64>,
) -> Result<(u64, u64)> {
    let (rx0, tx0) = (rx()?, tx()?);
    let payload = PAYLOAD.to_string();
    let s = ping(from, TUN4[1], 1, 3, &["-s", &payload, "-M", "do"])?;
    ensure!(
        s.transmitted == 1 && s.received == 1,
        "one {MTU}-byte ping (DF) through the tunnel: {s}"
    );
    // B counted the request before it answered it; the reply is only in A's rx.
    Ok((rx()?.saturating_sub(rx0), tx()?.saturating_sub(tx0)))
}

/// [`one_packet`] through a [`Pair`].
fn one_packet_of(pair: &Pair) -> Result<(u64, u64)> {
    one_packet(
        &pair.hosts.a,
        || Ok(pair.b.dump()?.peer(&pair.ka.public)?.rx),
        || Ok(pair.a.dump()?.peer(&pair.kb.public)?.tx),
    )
}

/// `ip link set dev DEV mtu MTU` in `ns`, checked.
fn set_mtu(ns: &Namespace, dev: &str) -> Result<()> {
    ns.ip(&["link", "set", "dev", dev, "mtu", &MTU.to_string()])?;
    ensure!(
        link_mtu(ns, dev)? == u64::from(MTU),
        "the MTU of {dev} did not change"
    );
    Ok(())
}

/// B's rx delta must be the unpadded message, plus at most one keepalive of A (sent when
/// A received data and had nothing to send for 10 s: not expected within this test, but
/// it would not be a padding error). The stale-MTU size differs from both by 15 bytes.
fn check(what: &str, rx: u64, tx: u64) -> Result<()> {
    let want = message_len(u64::from(MTU), u64::from(MTU));
    let stale = message_len(u64::from(MTU), 1420);
    println!("{what}: B's rx grew by {rx} (want {want}; {stale} with MTU 1420), A's tx by {tx}");
    if rx == want || rx == want + KEEPALIVE {
        return Ok(());
    }
    if rx == stale || rx == stale + KEEPALIVE {
        bail!(
            "{what}: B received a {rx}-byte message for one {MTU}-byte packet: padded as if \
             the MTU were still 1420 (want {want})"
        );
    }
    bail!("{what}: B's rx counter grew by {rx} for one {MTU}-byte packet (want {want})")
}

#[test]
fn padding_follows_the_tun_mtu_after_a_change_and_a_data_plane_restart() -> Result<()> {
    assert_eq!(message_len(1281, 1281), 1313);
    assert_eq!(message_len(1281, 1420), 1328);
    let env = setup!("mtu");
    mtu_change_and_restart(&env, Impl::Rs, false)
}

/// The same with what macOS runs (the portable data plane, every channel a framed stream),
/// and then a listen-port change, which hands the portable plane new sockets
/// (`MonitorToDatad::Sockets`): the monitor-to-data-plane messages, a data plane's restart
/// and keyd's adoption of the new data plane's channel, over macOS's transport.
#[test]
fn the_portable_data_plane_over_stream_ipc_follows_the_mtu_a_restart_and_a_port_change()
-> Result<()> {
    let env = setup!("mtp");
    mtu_change_and_restart(&env, Impl::RsPortableStream, true)
}

/// A (`ours`) against wireguard-go: the MTU changed after the start, the data plane
/// killed and restarted, each followed by one packet whose size B counts; with
/// `port_change`, then a new listen port and traffic over it.
fn mtu_change_and_restart(env: &wg_e2e::Env, ours: Impl, port_change: bool) -> Result<()> {
    let pair = Pair::new(
        env,
        PairSpec {
            a: ours,
            b: Impl::Go,
            underlay: Underlay::V4,
            psk: false,
            b_knows_a: true,
        },
    )?;
    let (ha, a_if) = (&pair.hosts.a, pair.a.ifname.as_str());
    let run = || -> Result<()> {
        // The handshake first, at the MTU of the start (1420).
        ping_ok(ha, TUN4[1], &[])?;

        // As wg-quick does after the daemon started.
        set_mtu(ha, a_if)?;
        std::thread::sleep(POLL_WAIT);
        let (rx, tx) = one_packet_of(&pair)?;
        check("after the MTU change", rx, tx)?;

        // A restarted data plane starts from 1420 again: the monitor must tell it the
        // MTU although it did not change since.
        let before = RsProcesses::wait(&pair.a, Duration::from_secs(5))?;
        sigkill(before.datad)?;
        let restarted = wait_until(Duration::from_secs(15), || {
            RsProcesses::of(&pair.a).is_ok_and(|p| p.datad != before.datad)
        });
        ensure!(restarted, "the data plane was not restarted within 15 s");
        // Traffic again (a new handshake if the data plane lost its sessions), then one
        // packet alone.
        ping_ok(ha, TUN4[1], &[]).context("after the data plane's restart")?;
        let (rx, tx) = one_packet_of(&pair)?;
        check("after a data-plane restart", rx, tx)?;
        if port_change {
            pair.a.set(&["listen-port", "51901"])?;
            ensure!(
                pair.a.dump()?.listen_port == 51901,
                "listen port not changed to 51901"
            );
            // A sends from its new sockets; B learns the new endpoint from it.
            ping_ok(ha, TUN4[1], &[]).context("after the listen-port change")?;
            let dump = pair.b.dump()?;
            let endpoint = dump.peer(&pair.ka.public)?.endpoint.clone();
            ensure!(
                endpoint.as_deref().is_some_and(|e| e.ends_with(":51901")),
                "B sees A at {endpoint:?} after A moved to port 51901"
            );
        }
        Ok(())
    };
    run().with_context(|| pair.diag())
}

/// The in-process mode (`wg_embed::run`) watches the MTU as the monitor does.
#[test]
fn in_process_mode_pads_to_the_tun_mtu_after_a_change() -> Result<()> {
    let env = setup!("mte");
    let hosts = two_hosts(&env)?;
    let (b, ka, kb) = wg_e2e::topo::go_peer_on_b(&env, &hosts)?;
    let a_if = env.name("wa")?;
    let a = Embedded::start(&hosts.a, &a_if)?;
    let run = || -> Result<()> {
        a.wg(&[
            "set",
            &a_if,
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
        address_tunnel(&hosts.a, &a_if, TUN4[0], TUN6[0])?;
        ping_ok(&hosts.a, TUN4[1], &[])?;
        set_mtu(&hosts.a, &a_if)?;
        std::thread::sleep(POLL_WAIT);
        let (rx, tx) = one_packet(
            &hosts.a,
            || Ok(b.dump()?.peer(&ka.public)?.rx),
            || {
                Ok(Dump::parse(&a.wg(&["show", &a_if, "dump"])?)?
                    .peer(&kb.public)?
                    .tx)
            },
        )?;
        check("in-process, after the MTU change", rx, tx)
    };
    run().with_context(|| b.diag())
}
