//! Traffic through a tunnel: ping, a TCP transfer compared by hash, interface counters.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use wg_netns::cmd::{self, Background};
use wg_netns::netns::{Namespace, PingStats};

use crate::env::{Env, SHORT};

/// `ping -n -c COUNT -i 0.2 -W WAIT_S [EXTRA…] DST` inside `ns`; a ping without replies is
/// not an error here.
pub fn ping(
    ns: &Namespace,
    dst: &str,
    count: u32,
    wait_s: u32,
    extra: &[&str],
) -> Result<PingStats> {
    let (count_s, wait) = (count.to_string(), wait_s.to_string());
    let mut args = vec!["-n", "-c", &count_s, "-i", "0.2", "-W", &wait];
    args.extend_from_slice(extra);
    args.push(dst);
    let mut c = ns.command("ping", &args);
    let timeout = Duration::from_secs(u64::from(count * (wait_s + 1) + 10));
    let out = cmd::output(&mut c, timeout)?;
    let text = String::from_utf8_lossy(&out.stdout);
    PingStats::parse(&text).with_context(|| {
        format!(
            "no ping statistics from `{}`: {}{}",
            cmd::describe(&c),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// The tunnel works from `ns` to `dst`: a first reply within three tries (the first
/// packet may wait for the handshake), then 4 of 4 replies.
pub fn ping_ok(ns: &Namespace, dst: &str, extra: &[&str]) -> Result<PingStats> {
    let mut first = None;
    for _ in 0..3 {
        let s = ping(ns, dst, 1, 3, extra)?;
        if s.ok() {
            first = Some(s);
            break;
        }
    }
    if first.is_none() {
        bail!("[{}] ping {dst} {extra:?}: no reply in 3 tries", ns.name());
    }
    let s = ping(ns, dst, 4, 2, extra)?;
    ensure!(
        s.received == s.transmitted,
        "[{}] ping {dst} {extra:?}: {s} (expected every reply)",
        ns.name()
    );
    Ok(s)
}

/// No reply at all from `dst` (3 pings, 1 s wait each).
pub fn ping_fails(ns: &Namespace, dst: &str, extra: &[&str]) -> Result<()> {
    let s = ping(ns, dst, 3, 1, extra)?;
    ensure!(
        s.received == 0,
        "[{}] ping {dst} {extra:?} should fail but got {s}",
        ns.name()
    );
    Ok(())
}

/// Waits (bounded) until a helper started in the background printed `word`.
pub fn wait_for_line(bg: &mut Background, word: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let log = bg
            .log_path()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        if log.lines().any(|l| l.trim() == word) {
            return Ok(());
        }
        if let Some(status) = bg.poll_exit()? {
            bail!(
                "helper exited ({status}) before printing {word:?}: {}",
                log.trim()
            );
        }
        ensure!(
            start.elapsed() < timeout,
            "helper did not print {word:?} within {} s: {}",
            timeout.as_secs(),
            log.trim()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `len` pseudo-random bytes over TCP from `from` to `to_addr:port` (a sink started
/// in `to`) and checks that the far end received exactly those bytes (length and
/// BLAKE2s-256 hash). Bounded: 60 s.
pub fn tcp_transfer(
    env: &Env,
    from: &Namespace,
    to: &Namespace,
    to_addr: &str,
    port: u16,
    len: u64,
) -> Result<()> {
    let helper = env.helper.to_string_lossy().into_owned();
    let port_s = port.to_string();
    let log = env.dir.path().join(env.file_name("tcp-sink", "log"));
    let mut sink = Background::spawn(
        "tcp sink",
        &mut to.command(&helper, &["tcp-sink", to_addr, &port_s, "60"]),
        Some(&log),
    )?;
    wait_for_line(&mut sink, "listening", Duration::from_secs(10))?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut c = from.command(
        &helper,
        &[
            "tcp-send",
            to_addr,
            &port_s,
            &len.to_string(),
            &seed.to_string(),
            "50",
        ],
    );
    let sent = cmd::checked(&mut c, Duration::from_secs(60))
        .with_context(|| format!("TCP sender; sink says: {}", sink.log_tail(5)))?;
    let status = sink
        .wait_exit(Duration::from_secs(10))?
        .context("the TCP sink did not finish within 10 s of the sender")?;
    let received = sink.log_tail(5);
    ensure!(status.success(), "TCP sink failed ({status}): {received}");
    let sent_line = sent
        .lines()
        .find_map(|l| l.strip_prefix("sent "))
        .with_context(|| format!("no `sent` line from the sender: {sent}"))?;
    let recv_line = received
        .lines()
        .find_map(|l| l.strip_prefix("received "))
        .with_context(|| format!("no `received` line from the sink: {received}"))?;
    ensure!(
        sent_line == recv_line,
        "TCP transfer corrupted: sent {sent_line}, received {recv_line}"
    );
    ensure!(
        sent_line.starts_with(&format!("{len} ")),
        "sender sent {sent_line}, wanted {len} bytes"
    );
    Ok(())
}

/// Packet and byte counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Packets received (for a TUN device: written to it by the daemon).
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets sent (for a TUN device: read from it by the daemon).
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

impl LinkCounters {
    /// Counters accumulated since `earlier`.
    pub fn since(self, earlier: LinkCounters) -> LinkCounters {
        LinkCounters {
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
        }
    }
}

/// The counters of interface `dev` in `ns`, from `ip -s -j link`. The kernel counts one
/// packet per buffer handed over, so a super-packet counts once with all its bytes.
pub fn link_counters(ns: &Namespace, dev: &str) -> Result<LinkCounters> {
    let mut c = ns.command("ip", &["-s", "-j", "link", "show", "dev", dev]);
    let out = cmd::checked(&mut c, SHORT)?;
    let v: serde_json::Value = serde_json::from_str(&out).context("`ip -j` printed bad JSON")?;
    let stats = &v[0]["stats64"];
    let field = |dir: &str, what: &str| {
        stats[dir][what]
            .as_u64()
            .with_context(|| format!("no {dir} {what} in {out}"))
    };
    Ok(LinkCounters {
        rx_packets: field("rx", "packets")?,
        rx_bytes: field("rx", "bytes")?,
        tx_packets: field("tx", "packets")?,
        tx_bytes: field("tx", "bytes")?,
    })
}

/// (rx packets, tx packets) of interface `dev` in `ns`: what the kernel saw written to /
/// read from a TUN device by the daemon.
pub fn link_stats(ns: &Namespace, dev: &str) -> Result<(u64, u64)> {
    let c = link_counters(ns, dev)?;
    Ok((c.rx_packets, c.tx_packets))
}

/// MTU of `dev` in `ns`.
pub fn link_mtu(ns: &Namespace, dev: &str) -> Result<u64> {
    let mut c = ns.command("ip", &["-j", "link", "show", "dev", dev]);
    let out = cmd::checked(&mut c, SHORT)?;
    let v: serde_json::Value = serde_json::from_str(&out).context("`ip -j` printed bad JSON")?;
    v[0]["mtu"]
        .as_u64()
        .with_context(|| format!("no mtu in {out}"))
}

/// Waits up to `timeout` for `done` to hold, checking every 50 ms.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether network device `dev` exists in `ns`.
pub fn link_exists(ns: &Namespace, dev: &str) -> bool {
    ns.ip(&["link", "show", "dev", dev]).is_ok()
}
