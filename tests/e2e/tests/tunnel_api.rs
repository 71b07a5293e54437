//! The library tunnel (`wg-tunnel`) on a real Linux TUN device, against wireguard-go:
//! namespace A holds a TUN interface driven by `Tunnel::start` in this test process,
//! namespace B runs wireguard-go. Pings both ways, TCP transfers both ways checked by
//! length and hash, the statistics, a run-time `set`, and a clean stop. On a real TUN the
//! tunnel runs the daemon's data plane in process (`Backend::Datad`): once on a TUN
//! created with the virtio-net header and offloads (as the daemon creates its own), once
//! on a plain one (as an app's `VpnService` TUN is).
// Linux only: network namespaces and the Linux daemon.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::fs::File;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use wg_e2e::net::tcp_transfer;
use wg_e2e::topo::{PORTS, TUN4, TUN6, UNDER4, address_tunnel, two_hosts};
use wg_e2e::wgtool::base64_to_hex;
use wg_e2e::{Namespace, link_exists, ping_ok, setup, wait_until};
use wg_tunnel::{Backend, Framing, Tunnel};

/// Creates TUN `ifname` in `ns` and starts a tunnel on it with `settings`, on a thread
/// that entered the namespace (the tunnel's thread inherits it, so its UDP sockets live
/// there too).
fn start_in(ns: &Namespace, ifname: &str, settings: String, offloaded: bool) -> Result<Tunnel> {
    let (tx, rx) = mpsc::channel::<Result<Tunnel, String>>();
    let (ns_name, name) = (ns.name().to_owned(), ifname.to_owned());
    std::thread::Builder::new()
        .name(format!("tunnel-{ifname}"))
        .spawn(move || {
            let start = || -> Result<Tunnel, String> {
                let f = File::open(format!("/var/run/netns/{ns_name}"))
                    .map_err(|e| format!("opening the namespace {ns_name}: {e}"))?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns {ns_name}: {e}"))?;
                let tun = if offloaded {
                    wg_tun::Tun::create_offloaded(&name, 1420)
                } else {
                    wg_tun::Tun::create(&name, 1420)
                }
                .map_err(|e| format!("creating TUN {name}: {e}"))?;
                Tunnel::start(tun.into_fd(), Framing::Raw, &settings)
                    .map_err(|e| format!("Tunnel::start: {e}"))
            };
            let _ = tx.send(start());
        })
        .context("spawning the namespace thread")?;
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(tunnel)) => Ok(tunnel),
        Ok(Err(e)) => bail!("{e}"),
        Err(e) => bail!("the tunnel did not start within 10 s: {e}"),
    }
}

#[test]
fn the_library_tunnel_on_a_real_tun_talks_to_wireguard_go() -> Result<()> {
    let env = setup!("tap");
    talks_to_wireguard_go(&env, false)
}

#[test]
fn the_library_tunnel_on_an_offloaded_tun_talks_to_wireguard_go() -> Result<()> {
    let env = setup!("tao");
    talks_to_wireguard_go(&env, true)
}

fn talks_to_wireguard_go(env: &wg_e2e::Env, offloaded: bool) -> Result<()> {
    let hosts = two_hosts(env)?;
    let (b, ka, kb) = wg_e2e::topo::go_peer_on_b(env, &hosts)?;

    let ifname = env.name("wa")?;
    let settings = format!(
        "private_key={}\nlisten_port={}\npublic_key={}\nendpoint={}:{}\n\
         allowed_ip={}/32\nallowed_ip={}/128\n",
        base64_to_hex(&ka.private)?,
        PORTS[0],
        base64_to_hex(&kb.public)?,
        UNDER4[1],
        PORTS[1],
        TUN4[1],
        TUN6[1],
    );
    let tunnel = start_in(&hosts.a, &ifname, settings, offloaded)?;
    ensure!(
        tunnel.backend() == Backend::Datad,
        "a real TUN runs the daemon's data plane, got {:?}",
        tunnel.backend()
    );
    let run = || -> Result<()> {
        address_tunnel(&hosts.a, &ifname, TUN4[0], TUN6[0])?;
        ping_ok(&hosts.a, TUN4[1], &[])?;
        ping_ok(&hosts.a, TUN6[1], &[])?;
        ping_ok(&hosts.b, TUN4[0], &[])?;
        // 4 MiB each way, compared by length and BLAKE2s hash at the far end.
        tcp_transfer(env, &hosts.a, &hosts.b, TUN4[1], 5201, 4 << 20)?;
        tcp_transfer(env, &hosts.b, &hosts.a, TUN4[0], 5202, 4 << 20)?;

        let stats = tunnel.peer_stats()?;
        ensure!(stats.len() == 1, "one peer, got {stats:?}");
        let peer = &stats[0];
        ensure!(
            peer.last_handshake.is_some() && peer.rx_bytes > 4 << 20 && peer.tx_bytes > 4 << 20,
            "handshake and traffic in the statistics: {peer:?}"
        );
        let text = tunnel.get()?;
        ensure!(
            text.contains(&format!("listen_port={}\n", PORTS[0])) && !text.contains("errno"),
            "get answer without the expected port"
        );
        // wireguard-go's view: A's endpoint is A's underlay address and port.
        let dump = b.dump()?;
        let seen = dump.peer(&ka.public)?;
        let expected = format!("{}:{}", UNDER4[0], PORTS[0]);
        ensure!(
            seen.endpoint.as_deref() == Some(expected.as_str()),
            "wireguard-go sees A at {:?}",
            seen.endpoint
        );
        // New sockets (a network change): other descriptors, the same port, still working.
        let before = tunnel.socket_fds()?;
        tunnel.bump_sockets()?;
        ensure!(tunnel.socket_fds()? != before, "bump kept the descriptors");
        ensure!(
            tunnel
                .get()?
                .contains(&format!("listen_port={}\n", PORTS[0])),
            "the port changed on bump"
        );
        // A second tunnel on the port in use is refused as the daemon refuses it (98
        // EADDRINUSE), and its TUN descriptor is closed (the interface goes).
        let second = env.name("wx")?;
        let refused = start_in(
            &hosts.a,
            &second,
            format!("listen_port={}\n", PORTS[0]),
            offloaded,
        );
        ensure!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("errno 98")),
            "a second tunnel on port {}: {:?}",
            PORTS[0],
            refused.map(|t| t.backend())
        );
        ensure!(
            wait_until(Duration::from_secs(5), || !link_exists(&hosts.a, &second)),
            "{second} still exists after a refused start"
        );
        tunnel.set_roaming(false)?;
        ping_ok(&hosts.a, TUN4[1], &[])?;
        ping_ok(&hosts.b, TUN4[0], &[])?;
        // A run-time change: B's IPv6 address leaves A's allowed IPs, so pings to it fail,
        // while IPv4 still works.
        tunnel.set(&format!(
            "public_key={}\nreplace_allowed_ips=true\nallowed_ip={}/32\n",
            base64_to_hex(&kb.public)?,
            TUN4[1]
        ))?;
        let six = wg_e2e::ping(&hosts.a, TUN6[1], 2, 1, &[])?;
        ensure!(six.received == 0, "IPv6 still routed after set: {six:?}");
        ping_ok(&hosts.a, TUN4[1], &[])?;
        Ok(())
    };
    let result = run().with_context(|| b.diag());
    // Stopping closes the TUN descriptor: the kernel deletes the (non-persistent)
    // interface.
    tunnel.stop().context("stopping the tunnel")?;
    result?;
    ensure!(
        wait_until(Duration::from_secs(5), || !link_exists(&hosts.a, &ifname)),
        "{ifname} still exists after stop"
    );
    Ok(())
}
