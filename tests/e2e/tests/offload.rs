//! The batching data plane really batches, by the kernel's own counters (which count one
//! packet per buffer handed over): a TCP transfer leaves the sender's TUN device as
//! super-packets (TSO), crosses the veth as segmented UDP sends (UDP GSO), and enters
//! the receiver's TUN device coalesced again (GRO). The same transfer with the offloads
//! turned off moves only packets of at most the MTU, which shows the check can fail.
// Linux only: network namespaces and the Linux daemon.
#![cfg(target_os = "linux")]

use anyhow::{Context, Result, ensure};
use wg_e2e::topo::TUN4;
use wg_e2e::{
    Env, Impl, LinkCounters, Pair, PairSpec, link_counters, ping_ok, setup, tcp_transfer,
};

const TCP_BYTES: u64 = 8 * 1024 * 1024;
/// The tunnel MTU and the veth MTU.
const TUN_MTU: u64 = 1420;
const VETH_MTU: u64 = 1500;

/// Average bytes per packet.
fn average(bytes: u64, packets: u64) -> u64 {
    bytes / packets.max(1)
}

/// Counters of A's TUN, A's veth and B's TUN across an A -> B transfer.
fn transfer(env: &Env, kind: Impl) -> Result<(LinkCounters, LinkCounters, LinkCounters)> {
    let spec = PairSpec {
        a: kind,
        b: kind,
        ..PairSpec::rs()
    };
    let pair = Pair::new(env, spec)?;
    let (ha, hb) = (&pair.hosts.a, &pair.hosts.b);
    let veth_a = env.name("va")?;
    let run = || -> Result<_> {
        ping_ok(ha, TUN4[1], &[])?;
        let before = (
            link_counters(ha, &pair.a.ifname)?,
            link_counters(ha, &veth_a)?,
            link_counters(hb, &pair.b.ifname)?,
        );
        tcp_transfer(env, ha, hb, TUN4[1], 5001, TCP_BYTES).context("TCP A -> B")?;
        Ok((
            link_counters(ha, &pair.a.ifname)?.since(before.0),
            link_counters(ha, &veth_a)?.since(before.1),
            link_counters(hb, &pair.b.ifname)?.since(before.2),
        ))
    };
    run().with_context(|| pair.diag())
}

#[test]
fn a_transfer_moves_as_super_packets_and_segmented_sends() -> Result<()> {
    let env = setup!("ofl");
    // With helper threads, so the batches' crypto is really spread over threads.
    let (tun_a, veth_a, tun_b) = transfer(&env, Impl::RsThreads)?;
    println!("A TUN tx {tun_a:?}\nA veth tx {veth_a:?}\nB TUN rx {tun_b:?}");
    ensure!(
        tun_a.tx_bytes >= TCP_BYTES && tun_b.rx_bytes >= TCP_BYTES,
        "the transfer did not cross the TUN devices: {tun_a:?} {tun_b:?}"
    );
    let read = average(tun_a.tx_bytes, tun_a.tx_packets);
    ensure!(
        read > 2 * TUN_MTU,
        "A read {read} bytes per TUN packet on average: no TSO super-packets"
    );
    let sent = average(veth_a.tx_bytes, veth_a.tx_packets);
    ensure!(
        sent > 2 * VETH_MTU,
        "A sent {sent} bytes per veth packet on average: no segmented UDP sends"
    );
    let written = average(tun_b.rx_bytes, tun_b.rx_packets);
    ensure!(
        written > 2 * TUN_MTU,
        "B wrote {written} bytes per TUN packet on average: nothing coalesced"
    );
    Ok(())
}

#[test]
fn without_offloads_every_packet_fits_the_mtu() -> Result<()> {
    let env = setup!("ofp");
    let (tun_a, veth_a, tun_b) = transfer(&env, Impl::RsPlain)?;
    println!("A TUN tx {tun_a:?}\nA veth tx {veth_a:?}\nB TUN rx {tun_b:?}");
    ensure!(
        tun_b.rx_bytes >= TCP_BYTES,
        "transfer incomplete: {tun_b:?}"
    );
    ensure!(average(tun_a.tx_bytes, tun_a.tx_packets) <= TUN_MTU);
    ensure!(average(veth_a.tx_bytes, veth_a.tx_packets) <= VETH_MTU);
    ensure!(average(tun_b.rx_bytes, tun_b.rx_packets) <= TUN_MTU);
    Ok(())
}

/// With a tiny MTU a 64 KiB super-packet splits into more segments than the room left in
/// a batch (up to 250 at MTU 300): the batch is sent first (and grown if need be) instead
/// of the packet being dropped, which would stall TCP.
#[test]
fn a_tiny_mtu_tunnel_still_carries_super_packets() -> Result<()> {
    let env = setup!("oft");
    let pair = Pair::new(&env, PairSpec::rs())?;
    let (ha, hb) = (&pair.hosts.a, &pair.hosts.b);
    let run = || -> Result<()> {
        ha.ip(&["link", "set", &pair.a.ifname, "mtu", "300"])?;
        hb.ip(&["link", "set", &pair.b.ifname, "mtu", "300"])?;
        ping_ok(ha, TUN4[1], &[])?;
        let before = link_counters(ha, &pair.a.ifname)?;
        tcp_transfer(&env, ha, hb, TUN4[1], 5001, 2 * 1024 * 1024).context("TCP A -> B")?;
        let read = link_counters(ha, &pair.a.ifname)?.since(before);
        println!("A TUN tx {read:?}");
        let average = average(read.tx_bytes, read.tx_packets);
        ensure!(
            average > 16 * 300,
            "{average} bytes per TUN read: no super-packets at MTU 300"
        );
        // A dropped super-packet is read again when TCP retransmits it: the bytes read
        // would then exceed what was sent (2.1 MB with headers; 2.8 MB with the batch never
        // flushed and grown).
        let sent = 2 * 1024 * 1024;
        ensure!(
            read.tx_bytes < sent + sent / 4,
            "{} bytes read from the TUN for a {sent}-byte transfer: super-packets were \
             dropped and retransmitted",
            read.tx_bytes
        );
        Ok(())
    };
    run().with_context(|| pair.diag())
}
