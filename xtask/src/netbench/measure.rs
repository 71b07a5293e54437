//! Measurements: iperf3 and ping (run bounded inside a namespace, output parsed), and the
//! `/proc` readings (a daemon's whole process tree: CPU time, RSS, peak RSS; machine-wide
//! busy time).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cmd::{self, Background};
use crate::netns::Namespace;

/// TCP port of the iperf3 server.
pub(crate) const IPERF_PORT: u16 = 5201;
/// Bound for short commands (`ss`).
const SHORT: Duration = Duration::from_secs(10);

/// What iperf3 reported for a TCP test.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tcp {
    /// Goodput at the receiver (`end.sum_received.bits_per_second`).
    pub(crate) received_bps: f64,
    /// Bytes the receiver got.
    pub(crate) received_bytes: f64,
    /// Sender-side retransmits (`end.sum_sent.retransmits`).
    pub(crate) retransmits: Option<u64>,
}

/// Parses the JSON of an iperf3 TCP client run (`-J`).
pub(crate) fn parse_iperf_tcp(v: &Value) -> Result<Tcp> {
    if let Some(err) = v["error"].as_str() {
        bail!("iperf3 reported an error: {err}");
    }
    let rcv = &v["end"]["sum_received"];
    let received_bps = rcv["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    let received_bytes = rcv["bytes"]
        .as_f64()
        .context("iperf3 JSON has no end.sum_received.bytes")?;
    Ok(Tcp {
        received_bps,
        received_bytes,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64(),
    })
}

/// What iperf3 reported for a UDP test.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Udp {
    /// Datagrams the server received per second.
    pub(crate) rx_pps: f64,
    /// Datagrams the server received (`packets - lost_packets`): the packets delivered.
    pub(crate) rx_packets: f64,
    /// Datagrams the client sent per second.
    pub(crate) tx_pps: f64,
    /// Lost datagrams in percent, as the server counted them.
    pub(crate) loss_pct: f64,
}

/// Parses the JSON of an iperf3 UDP client run: `end.sum_received` (iperf3 ≥ 3.11) or
/// `end.sum` (older), whose `packets - lost_packets` arrived at the server.
pub(crate) fn parse_iperf_udp(v: &Value) -> Result<Udp> {
    if let Some(err) = v["error"].as_str() {
        bail!("iperf3 reported an error: {err}");
    }
    let end = &v["end"];
    let rcv = if end["sum_received"].is_object() {
        &end["sum_received"]
    } else {
        &end["sum"]
    };
    let sent = if end["sum_sent"].is_object() {
        &end["sum_sent"]
    } else {
        &end["sum"]
    };
    let num = |o: &Value, k: &str| {
        o[k].as_f64()
            .with_context(|| format!("iperf3 UDP JSON has no end summary field {k}"))
    };
    let packets = num(rcv, "packets")?;
    let lost = num(rcv, "lost_packets")?;
    let seconds = num(rcv, "seconds")?;
    let tx_seconds = num(sent, "seconds")?;
    if seconds <= 0.0 || tx_seconds <= 0.0 {
        bail!("iperf3 UDP test lasted 0 s");
    }
    let rx_packets = (packets - lost).max(0.0);
    Ok(Udp {
        rx_pps: rx_packets / seconds,
        rx_packets,
        tx_pps: num(sent, "packets")? / tx_seconds,
        loss_pct: rcv["lost_percent"].as_f64().unwrap_or(0.0),
    })
}

/// Daemon CPU per unit of work delivered: `cpu / delivered` (CPU seconds per GB, CPU
/// microseconds per packet, …). `None` when nothing was delivered (or a figure is not a
/// finite number): a cost per unit is meaningless then, and the row is left empty rather
/// than infinite.
pub(crate) fn cpu_per_delivered(cpu: f64, delivered: f64) -> Option<f64> {
    (cpu.is_finite() && cpu >= 0.0 && delivered.is_finite() && delivered > 0.0)
        .then(|| cpu / delivered)
}

/// Daemon CPU in microseconds per packet the iperf3 server received, from daemon CPU
/// seconds over the test and the UDP summary. Only delivered packets count: a flood
/// (`-b 0`) offers more than any tunnel carries, and the CPU spent on packets lost on the
/// way is part of what each delivered one cost.
pub(crate) fn cpu_us_per_udp_packet(cpu_s: f64, udp: &Udp) -> Option<f64> {
    cpu_per_delivered(cpu_s * 1e6, udp.rx_packets)
}

/// Round-trip times (ms) of each reply line of iputils ping (`time=0.123 ms`).
pub(crate) fn parse_ping_times(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next())
        .filter_map(|t| t.parse::<f64>().ok())
        .collect()
}

/// Average of ping's reply times, if any.
pub(crate) fn mean(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    Some(v.iter().sum::<f64>() / v.len() as f64)
}

/// An iperf3 server (`-s -1`: one test, then it exits) in a namespace; stopped by PID on
/// drop if it is still there.
pub(crate) struct IperfServer(Background);

impl IperfServer {
    /// Starts the server and waits (≤ 5 s) until it listens.
    pub(crate) fn start(ns: &Namespace, log: &std::path::Path) -> Result<Self> {
        let port = IPERF_PORT.to_string();
        let mut c = ns.command("iperf3", &["-s", "-1", "-p", &port]);
        let mut server = Background::spawn("iperf3 server", &mut c, Some(log))?;
        let filter = format!("sport = :{IPERF_PORT}");
        let start = Instant::now();
        loop {
            let listening = ns.exec("ss", &["-Hltn", &filter], SHORT)?;
            if !listening.trim().is_empty() {
                return Ok(Self(server));
            }
            if let Some(status) = server.poll_exit()? {
                bail!("iperf3 server exited ({status}): {}", server.log_tail(10));
            }
            if start.elapsed() > Duration::from_secs(5) {
                bail!("iperf3 server did not listen on port {IPERF_PORT} within 5 s");
            }
            cmd::sleep(Duration::from_millis(30))?;
        }
    }

    /// Lets a finished server exit by itself (it does after one test).
    pub(crate) fn finish(mut self) {
        let _ = self.0.wait_exit(Duration::from_secs(2));
    }
}

/// Runs the iperf3 client in `ns` against `target` for `seconds`, with `extra` options;
/// returns its JSON.
pub(crate) fn iperf_client(
    ns: &Namespace,
    target: &str,
    seconds: u32,
    extra: &[&str],
) -> Result<Value> {
    let port = IPERF_PORT.to_string();
    let secs = seconds.to_string();
    let mut args = vec![
        "-c",
        target,
        "-p",
        &port,
        "-t",
        &secs,
        "-J",
        "--connect-timeout",
        "5000",
    ];
    args.extend_from_slice(extra);
    let mut c = ns.command("iperf3", &args);
    let out = cmd::output(&mut c, Duration::from_secs(u64::from(seconds) + 30))?;
    let json: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`{}` printed no JSON ({}): {}",
            cmd::describe(&c),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(err) = json["error"].as_str() {
        bail!("`{}` failed: {err}", cmd::describe(&c));
    }
    cmd::ensure_success(&c, &out)?;
    Ok(json)
}

/// Runs `ping -c count -i interval` in `ns`; returns the reply times (ms) and the text.
pub(crate) fn ping(
    ns: &Namespace,
    target: &str,
    count: u32,
    interval: &str,
    wait_s: u32,
) -> Result<(Vec<f64>, String)> {
    let count_s = count.to_string();
    let wait = wait_s.to_string();
    let mut c = ns.command(
        "ping",
        &["-n", "-c", &count_s, "-i", interval, "-W", &wait, target],
    );
    let interval_s: f64 = interval.parse().unwrap_or(1.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bound = (f64::from(count) * interval_s) as u64 + u64::from(wait_s) + 15;
    let out = cmd::output(&mut c, Duration::from_secs(bound))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok((parse_ping_times(&text), text))
}

/// The fields of `/proc/PID/stat` we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub(crate) pid: u32,
    pub(crate) comm: String,
    pub(crate) state: char,
    pub(crate) ppid: u32,
    /// Field 14, clock ticks.
    pub(crate) utime: u64,
    /// Field 15, clock ticks.
    pub(crate) stime: u64,
    /// Field 22, clock ticks since boot: with the PID, identifies a process.
    pub(crate) starttime: u64,
}

/// Parses one `/proc/PID/stat` line; `comm` may contain spaces and parentheses, so the
/// fields after it are found from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let (pid, comm) = head.split_once(" (")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): field n is f[n - 3].
    let field = |n: usize| f.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    Some(ProcStat {
        pid: pid.trim().parse().ok()?,
        comm: comm.to_owned(),
        state: f.first()?.chars().next()?,
        ppid: u32::try_from(field(4)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB.
pub(crate) fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Every live process's stat line.
pub(crate) fn all_processes() -> Vec<ProcStat> {
    wg_netns::cmd::proc_stat_lines()
        .iter()
        .filter_map(|s| parse_stat(s))
        .collect()
}

/// `root` and all its descendants (through ppid links) with their depth below `root`,
/// root first; zombies excluded.
pub(crate) fn tree_of(all: &[ProcStat], root: u32) -> Vec<(ProcStat, u32)> {
    let mut children: BTreeMap<u32, Vec<&ProcStat>> = BTreeMap::new();
    for p in all {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut out = Vec::new();
    let Some(top) = all.iter().find(|p| p.pid == root) else {
        return out;
    };
    let mut stack = vec![(top, 0u32)];
    while let Some((p, depth)) = stack.pop() {
        if p.state != 'Z' && p.state != 'X' {
            out.push((p.clone(), depth));
        }
        if depth < 16
            && let Some(kids) = children.get(&p.pid)
        {
            for k in kids.iter().rev() {
                stack.push((k, depth + 1));
            }
        }
    }
    out
}

/// The process tree of a daemon we started (PID `root`), read from `/proc` now.
pub(crate) fn daemon_tree(root: u32) -> Vec<(ProcStat, u32)> {
    tree_of(&all_processes(), root)
}

/// utime + stime of the whole tree, in clock ticks.
pub(crate) fn tree_cpu_ticks(tree: &[(ProcStat, u32)]) -> u64 {
    tree.iter().map(|(p, _)| p.utime + p.stime).sum()
}

/// A `/proc/PID/status` field (KiB) of one process, if it is still the same process.
fn status_kib(p: &ProcStat, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).ok()?;
    parse_status_kib(&text, key)
}

/// Sum of VmRSS over the tree, KiB.
pub(crate) fn tree_rss_kib(tree: &[(ProcStat, u32)]) -> u64 {
    tree.iter()
        .filter_map(|(p, _)| status_kib(p, "VmRSS"))
        .sum()
}

/// Sum of the proportional set size (`Pss` of `/proc/PID/smaps_rollup`) over the tree,
/// KiB: every page counted once, shared pages (libc, one binary run as two processes)
/// divided among the processes mapping them. VmRSS counts a shared page in full in each
/// process, so a tree of several processes pays for its libc once per process there.
pub(crate) fn tree_pss_kib(tree: &[(ProcStat, u32)]) -> u64 {
    tree.iter()
        .filter_map(|(p, _)| {
            let text = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", p.pid)).ok()?;
            parse_status_kib(&text, "Pss")
        })
        .sum()
}

/// `(comm@depth, VmHWM KiB)` of every process of the tree.
pub(crate) fn tree_hwm(tree: &[(ProcStat, u32)]) -> Vec<(String, u64)> {
    tree.iter()
        .filter_map(|(p, d)| Some((format!("{}@{d}", p.comm), status_kib(p, "VmHWM")?)))
        .collect()
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub(crate) fn clock_ticks() -> f64 {
    let mut c = cmd::command("getconf", &["CLK_TCK"]);
    cmd::checked(&mut c, SHORT)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Busy clock ticks of the whole machine from the `cpu` line of `/proc/stat`: everything
/// but idle and iowait.
pub(crate) fn parse_machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4).copied().unwrap_or(0))
}

/// Busy ticks of the machine now.
pub(crate) fn machine_busy() -> Option<u64> {
    parse_machine_busy(&std::fs::read_to_string("/proc/stat").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn iperf_tcp_summary() {
        let v = json!({"end": {
            "sum_sent": {"bytes": 1_100_000_000u64, "bits_per_second": 8.8e8, "retransmits": 42},
            "sum_received": {"bytes": 1_000_000_000u64, "bits_per_second": 8.0e8}
        }});
        let t = parse_iperf_tcp(&v).unwrap();
        assert!((t.received_bps - 8.0e8).abs() < 1.0);
        assert!((t.received_bytes - 1e9).abs() < 1.0);
        assert_eq!(t.retransmits, Some(42));
    }

    #[test]
    fn iperf_errors_and_missing_fields() {
        let e = parse_iperf_tcp(&json!({"error": "unable to connect"})).unwrap_err();
        assert!(format!("{e}").contains("unable to connect"));
        assert!(parse_iperf_tcp(&json!({"end": {}})).is_err());
        assert!(parse_iperf_udp(&json!({"end": {}})).is_err());
    }

    #[test]
    fn iperf_udp_new_and_old_layouts() {
        // iperf3 3.12, as printed by the client.
        let v = json!({"end": {
            "sum": {"seconds": 1.000122, "packets": 266_900, "lost_packets": 6482, "lost_percent": 2.43},
            "sum_sent": {"seconds": 1.0, "packets": 266_900, "lost_packets": 0},
            "sum_received": {"seconds": 2.0, "packets": 266_900, "lost_packets": 6900, "lost_percent": 2.59}
        }});
        let u = parse_iperf_udp(&v).unwrap();
        assert!((u.rx_pps - 130_000.0).abs() < 1e-6);
        assert!((u.rx_packets - 260_000.0).abs() < 1e-9);
        assert!((u.tx_pps - 266_900.0).abs() < 1e-6);
        assert!((u.loss_pct - 2.59).abs() < 1e-9);
        let old = json!({"end": {"sum": {"seconds": 2.0, "packets": 100, "lost_packets": 50, "lost_percent": 50.0}}});
        let u = parse_iperf_udp(&old).unwrap();
        assert!((u.rx_pps - 25.0).abs() < 1e-9);
        assert!((u.rx_packets - 50.0).abs() < 1e-9);
        assert!((u.tx_pps - 50.0).abs() < 1e-9);
        // More lost than sent (iperf3 counts sequence gaps): nothing delivered, not < 0.
        let odd = json!({"end": {"sum": {"seconds": 1.0, "packets": 10, "lost_packets": 12}}});
        assert_eq!(parse_iperf_udp(&odd).unwrap().rx_packets, 0.0);
    }

    #[test]
    fn cpu_per_delivered_unit() {
        assert_eq!(cpu_per_delivered(3.0, 2.0), Some(1.5));
        assert_eq!(cpu_per_delivered(0.0, 5.0), Some(0.0));
        assert_eq!(cpu_per_delivered(3.0, 0.0), None);
        assert_eq!(cpu_per_delivered(3.0, -1.0), None);
        assert_eq!(cpu_per_delivered(f64::NAN, 1.0), None);
        assert_eq!(cpu_per_delivered(1.0, f64::INFINITY), None);
    }

    #[test]
    fn cpu_per_udp_packet_counts_delivered_packets_only() {
        // 6 s flood: 3,000,000 sent, 1,800,000 lost, so 1,200,000 delivered; both daemon
        // trees used 9 CPU-s together: 7.5 us per delivered packet (not 3 us per sent one).
        let u = Udp {
            rx_pps: 200_000.0,
            rx_packets: 1_200_000.0,
            tx_pps: 500_000.0,
            loss_pct: 60.0,
        };
        let us = cpu_us_per_udp_packet(9.0, &u).unwrap();
        assert!((us - 7.5).abs() < 1e-9, "{us}");
        let none = Udp {
            rx_packets: 0.0,
            ..u
        };
        assert_eq!(cpu_us_per_udp_packet(9.0, &none), None);
    }

    #[test]
    fn ping_reply_times() {
        let text = "PING 10.204.0.2 (10.204.0.2) 56(84) bytes of data.\n\
            64 bytes from 10.204.0.2: icmp_seq=1 ttl=64 time=1.23 ms\n\
            64 bytes from 10.204.0.2: icmp_seq=2 ttl=64 time=0.456 ms\n\
            From 10.204.0.1 icmp_seq=3 Destination Host Unreachable\n\
            \n--- 10.204.0.2 ping statistics ---\n\
            3 packets transmitted, 2 received, 33% packet loss, time 2003ms\n\
            rtt min/avg/max/mdev = 0.456/0.843/1.230/0.387 ms\n";
        assert_eq!(parse_ping_times(text), vec![1.23, 0.456]);
        assert_eq!(mean(&[1.0, 2.0]), Some(1.5));
        assert_eq!(mean(&[]), None);
    }

    #[test]
    fn proc_stat_with_awkward_comm() {
        let line = "4242 (wg (x) y) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 \
                    3 0 98765 1000000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 \
                    0 0 0 0 0\n";
        let p = parse_stat(line).unwrap();
        assert_eq!(p.pid, 4242);
        assert_eq!(p.comm, "wg (x) y");
        assert_eq!(p.state, 'S');
        assert_eq!(p.ppid, 17);
        assert_eq!((p.utime, p.stime), (250, 75));
        assert_eq!(p.starttime, 98765);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn proc_status_fields() {
        let text = "Name:\tdatad\nVmPeak:\t  20000 kB\nVmHWM:\t    9876 kB\nVmRSS:\t    5432 kB\n";
        assert_eq!(parse_status_kib(text, "VmHWM"), Some(9876));
        assert_eq!(parse_status_kib(text, "VmRSS"), Some(5432));
        let rollup = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:    3500 kB\nPss:    1076 kB\nPss_Dirty:   360 kB\n";
        assert_eq!(parse_status_kib(rollup, "Pss"), Some(1076));
        assert_eq!(parse_status_kib(text, "VmSwap"), None);
    }

    fn ps(pid: u32, ppid: u32, state: char, ticks: u64) -> ProcStat {
        ProcStat {
            pid,
            comm: format!("p{pid}"),
            state,
            ppid,
            utime: ticks,
            stime: 1,
            starttime: 0,
        }
    }

    #[test]
    fn tree_follows_ppid_links() {
        // monitor 10 -> keyd 11, spawner 12 -> datad 13; 20 is unrelated; 14 a zombie.
        let all = vec![
            ps(1, 0, 'S', 0),
            ps(10, 1, 'S', 5),
            ps(11, 10, 'S', 7),
            ps(12, 10, 'S', 1),
            ps(13, 12, 'R', 100),
            ps(14, 12, 'Z', 1000),
            ps(20, 1, 'S', 50),
        ];
        let t = tree_of(&all, 10);
        let got: Vec<(u32, u32)> = t.iter().map(|(p, d)| (p.pid, *d)).collect();
        assert_eq!(got, vec![(10, 0), (11, 1), (12, 1), (13, 2)]);
        assert_eq!(tree_cpu_ticks(&t), 5 + 7 + 1 + 100 + 4);
        assert!(tree_of(&all, 99).is_empty());
    }

    #[test]
    fn machine_busy_from_proc_stat() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(parse_machine_busy(stat), Some(100 + 5 + 50 + 3 + 2 + 1));
        assert_eq!(parse_machine_busy("intr 1 2"), None);
    }
}
