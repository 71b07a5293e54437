//! Interop matrix: wireguard-rs against itself (also with its offloads off), wireguard-go
//! and boringtun, and its portable data plane (macOS's and the BSDs') against
//! wireguard-go, with ours as
//! initiator (the side that pings first and the only one that knows the other's endpoint)
//! and as responder, over an IPv4 and an IPv6 underlay, with and without a preshared key.
//! Each case pings IPv4 and IPv6 through the tunnel both ways and sends 2 MiB over TCP each
//! way, compared by hash at the far end.
//!
//! The cases are a pairwise cover of role × underlay × PSK (four per implementation), one
//! `#[test]` per implementation; every failing case is reported, not only the first.
// Linux only: network namespaces and the Linux daemon.
#![cfg(target_os = "linux")]

use anyhow::{Context, Result, ensure};
use wg_e2e::topo::{TUN4, TUN6};
use wg_e2e::{Env, Impl, Pair, PairSpec, Underlay, ping_ok, setup, tcp_transfer};

const TCP_BYTES: u64 = 2 * 1024 * 1024;

/// (ours initiates, underlay, PSK): every pair of values of two dimensions appears.
const CASES: [(bool, Underlay, bool); 4] = [
    (true, Underlay::V4, true),
    (false, Underlay::V4, false),
    (true, Underlay::V6, false),
    (false, Underlay::V6, true),
];

fn matrix(env: &Env, other: Impl) -> Result<()> {
    matrix_of(env, Impl::Rs, other)
}

fn matrix_of(env: &Env, ours: Impl, other: Impl) -> Result<()> {
    let mut failures = Vec::new();
    for (ours_first, underlay, psk) in CASES {
        let (a, b) = if ours_first {
            (ours, other)
        } else {
            (other, ours)
        };
        let spec = PairSpec {
            a,
            b,
            underlay,
            psk,
            b_knows_a: false,
        };
        let label = format!(
            "{} (initiator) -> {} over {underlay:?}, {}",
            a.name(),
            b.name(),
            if psk { "PSK" } else { "no PSK" }
        );
        let start = std::time::Instant::now();
        match case(env, spec) {
            Ok(()) => println!("ok   {label} ({:.1} s)", start.elapsed().as_secs_f64()),
            Err(e) => {
                println!("FAIL {label}");
                failures.push(format!("{label}: {e:#}"));
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
    Ok(())
}

fn case(env: &Env, spec: PairSpec) -> Result<()> {
    let pair = Pair::new(env, spec)?;
    let (ha, hb) = (&pair.hosts.a, &pair.hosts.b);
    let run = || -> Result<()> {
        ping_ok(ha, TUN4[1], &[])?;
        ping_ok(ha, TUN6[1], &[])?;
        // B was not told A's endpoint: it must have learned it from the handshake.
        let dump = pair.b.dump()?;
        let peer_a = dump.peer(&pair.ka.public)?;
        ensure!(
            peer_a.endpoint.as_deref() == Some(spec.underlay.endpoint(0).as_str()),
            "responder shows endpoint {:?} for the initiator, expected {}",
            peer_a.endpoint,
            spec.underlay.endpoint(0)
        );
        ensure!(peer_a.latest_handshake > 0, "responder shows no handshake");
        ensure!(
            peer_a.preshared_key == pair.psk,
            "responder shows preshared key {:?}, configured {:?}",
            peer_a.preshared_key,
            pair.psk
        );
        ping_ok(hb, TUN4[0], &[])?;
        ping_ok(hb, TUN6[0], &[])?;
        tcp_transfer(env, ha, hb, TUN4[1], 5001, TCP_BYTES).context("TCP A -> B over IPv4")?;
        tcp_transfer(env, hb, ha, TUN6[0], 5002, TCP_BYTES).context("TCP B -> A over IPv6")?;
        let dump = pair.a.dump()?;
        let peer_b = dump.peer(&pair.kb.public)?;
        ensure!(
            peer_b.rx > TCP_BYTES && peer_b.tx > TCP_BYTES,
            "initiator counters too small after 2 MiB each way: rx {} tx {}",
            peer_b.rx,
            peer_b.tx
        );
        // The traffic went through the plane under test, not the batched one.
        for daemon in [&pair.a, &pair.b] {
            ensure!(
                !matches!(daemon.kind, Impl::RsPortable | Impl::RsPortableStream)
                    || daemon
                        .log()
                        .contains("the portable data plane (macOS's and the BSDs') runs"),
                "{} did not run the portable data plane",
                daemon.ifname
            );
            ensure!(
                daemon.kind != Impl::RsPortableStream
                    || daemon
                        .log()
                        .contains("every channel is a framed stream pair"),
                "{} did not use stream channels",
                daemon.ifname
            );
        }
        Ok(())
    };
    run().with_context(|| pair.diag())
}

#[test]
fn interop_wireguard_rs() -> Result<()> {
    let env = setup!("irs");
    matrix(&env, Impl::Rs)
}

/// The offloaded, multi-threaded data plane against the one-packet-at-a-time fallbacks:
/// super-packets split on one side must arrive whole on the other, and coalesced runs
/// must be taken apart correctly.
#[test]
fn interop_wireguard_rs_without_offloads() -> Result<()> {
    let env = setup!("irp");
    matrix(&env, Impl::RsPlain)
}

#[test]
fn interop_wireguard_go() -> Result<()> {
    let env = setup!("igo");
    matrix(&env, Impl::Go)
}

/// The data plane macOS, FreeBSD and NetBSD run (bare packets here instead of their
/// address-family header, which its unit and in-process tests cover), in the daemon's
/// data-plane process with the real monitor, keyd and spawner, against wireguard-go.
#[test]
fn interop_portable_data_plane_with_wireguard_go() -> Result<()> {
    let env = setup!("ipo");
    matrix_of(&env, Impl::RsPortable, Impl::Go)
}

/// What macOS runs, but for utun and its sandbox: the portable data plane, and every
/// channel between the processes a framed stream with descriptor passing.
#[test]
fn interop_portable_data_plane_over_stream_ipc_with_wireguard_go() -> Result<()> {
    let env = setup!("ips");
    matrix_of(&env, Impl::RsPortableStream, Impl::Go)
}

#[test]
fn interop_boringtun() -> Result<()> {
    let env = setup!("ibt");
    matrix(&env, Impl::Boringtun)
}
