//! The tunnel benchmark of `cargo xtask bench`: wireguard-rs against the other userspace
//! implementations it finds (and plain veth as the ceiling), side by side on one machine.
//!
//! Two namespaces `<prefix>a` and `<prefix>b` joined by a veth pair; for each round, for
//! each implementation (interleaved: A B C A B C …): a fresh daemon at each end, configured
//! with `wg setconf` over its UAPI socket, then the first ping (handshake included), idle
//! ping, iperf3 TCP with 1 stream (ping running alongside) and 4 streams, iperf3 UDP with
//! 64-byte datagrams, daemon CPU per GB (TCP) and per packet received (UDP) and peak RSS
//! over each daemon's whole process tree; then a fresh daemon in B alone for the idle RSS
//! with 0, 1,000 and 10,000 peers and, with 1,000 peers, the handshake flood ([`hsflood`]).
//! The medians over rounds and the ratios to wireguard-rs go to the terminal,
//! `results.json` (every raw sample) and `results.md`.
//!
//! Every command is bounded in time; namespaces, daemons (by PID), sockets and key files
//! are RAII guards, released on success, error and Ctrl-C.

pub(crate) mod hsflood;
pub(crate) mod impls;
pub(crate) mod measure;
pub(crate) mod report;

use std::cell::Cell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use wg_netns::private_dir::PrivateDir;

use crate::cmd;
use crate::netns::{self, Namespace, RunNames, TwoHosts, UNDERLAY_A, UNDERLAY_B};
use impls::{Daemon, Impl, Kind, OURS};
use measure::IperfServer;
use report::{ProcPeak, Results, Sample};

/// Name tag of the benchmark's namespaces and interfaces (`wgrsb<pid>a`, …).
pub(crate) const TAG: &str = "wgrsb";
/// Tunnel addresses of A and B.
const TUNNEL_A: &str = "10.204.0.1";
const TUNNEL_B: &str = "10.204.0.2";
/// UDP port of the tunnel ends, and of the memory/handshake responder.
const PORT: u16 = 51820;
const RESPONDER_PORT: u16 = 51821;
/// The first ping gets this many tries of [`FIRST_PING_WAIT_S`] each (15 s in all).
const FIRST_PING_TRIES: u32 = 3;
const FIRST_PING_WAIT_S: u32 = 5;
/// Peers of the handshake responder, and the flood's bounds.
const HS_PEERS: u32 = 1000;
const HS_INITIATIONS: usize = 2000;
const HS_SECONDS: u64 = 10;
/// Time a freshly configured daemon gets before its idle RSS is read.
const SETTLE: Duration = Duration::from_secs(2);
/// Pause between tests, for queues to drain.
const PAUSE: Duration = Duration::from_millis(500);
/// The per-process peak RSS target, MiB.
const RSS_TARGET_MIB: f64 = 32.0;

/// Which tests run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tests {
    pub(crate) ping: bool,
    pub(crate) tcp1: bool,
    pub(crate) tcp4: bool,
    /// TCP 1 stream at `--paced-rate`, ping alongside.
    pub(crate) tcppaced: bool,
    pub(crate) udp: bool,
    pub(crate) rss: bool,
    pub(crate) hs: bool,
}

impl Tests {
    /// Every test.
    pub(crate) const ALL: Self = Self {
        ping: true,
        tcp1: true,
        tcp4: true,
        tcppaced: true,
        udp: true,
        rss: true,
        hs: true,
    };

    /// No test.
    const NONE: Self = Self {
        ping: false,
        tcp1: false,
        tcp4: false,
        tcppaced: false,
        udp: false,
        rss: false,
        hs: false,
    };

    /// Parses `ping,tcp1,tcp4,tcppaced,udp,rss,hs` (any subset).
    pub(crate) fn parse(list: &str) -> Result<Self> {
        let mut t = Self::NONE;
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "ping" => t.ping = true,
                "tcp1" => t.tcp1 = true,
                "tcp4" => t.tcp4 = true,
                "tcppaced" => t.tcppaced = true,
                "udp" => t.udp = true,
                "rss" => t.rss = true,
                "hs" => t.hs = true,
                other => bail!(
                    "unknown test {other:?}; the tests are ping,tcp1,tcp4,tcppaced,udp,rss,hs"
                ),
            }
        }
        if t == Self::NONE {
            bail!("--tests names no test");
        }
        Ok(t)
    }

    /// Whether a tunnel pair is needed (anything but the single-daemon tests).
    fn tunnel(self) -> bool {
        self.ping || self.tcp1 || self.tcp4 || self.tcppaced || self.udp
    }
}

/// Options of the tunnel benchmark.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) impls: Vec<Impl>,
    pub(crate) rounds: u32,
    /// Seconds per iperf3 test.
    pub(crate) duration: u32,
    pub(crate) tests: Tests,
    /// Idle RSS is measured with each of these peer counts.
    pub(crate) rss_peers: Vec<u32>,
    pub(crate) keep_going: bool,
    /// Results folder (created).
    pub(crate) out_dir: PathBuf,
    /// The command as typed, for the report.
    pub(crate) command_line: String,
    /// Version strings of the implementations, for the report.
    pub(crate) versions: Vec<(String, String)>,
    /// The xtask binary that runs the handshake flood (a release build, so that the
    /// initiators are not slower than the responder).
    pub(crate) flood_exe: PathBuf,
    /// Unanswered initiations in flight at most during the handshake flood.
    pub(crate) hs_window: usize,
    /// iperf3's rate in the paced TCP test, Mbit/s.
    pub(crate) paced_rate: u32,
}

/// `YYYYMMDD-HHMMSS` (UTC) of a Unix time.
pub(crate) fn utc_stamp(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(0);
    let rem = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Unix time now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new results folder `<base>/<stamp>` (`-2`, `-3`, … if taken).
pub(crate) fn create_out_dir(base: &Path, stamp: &str) -> Result<PathBuf> {
    for n in 1..100 {
        let dir = if n == 1 {
            base.join(stamp)
        } else {
            base.join(format!("{stamp}-{n}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(base)
                    .with_context(|| format!("could not create {}", base.display()))?;
                std::fs::create_dir(&dir)
                    .with_context(|| format!("could not create {}", dir.display()))?;
                return Ok(dir);
            }
            Err(e) => return Err(e).with_context(|| format!("could not create {}", dir.display())),
        }
    }
    bail!(
        "could not find a free results folder under {}",
        base.display()
    )
}

/// Allowed IP of the `i`-th random peer: `10.64.0.0 + i`, a /32 each.
fn peer_allowed_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + i)
}

/// A `wg setconf` file: interface key and port, then one peer per public key with its
/// own /32 and, for a tunnel, the peer's endpoint and tunnel address.
fn config_text(private: &str, port: u16, peers: &[String], tunnel: Option<(&str, &str)>) -> String {
    let mut s = format!("[Interface]\nPrivateKey = {private}\nListenPort = {port}\n");
    for (i, public) in (0u32..).zip(peers) {
        let _ = write!(s, "\n[Peer]\nPublicKey = {public}\n");
        match tunnel {
            Some((allowed, endpoint)) => {
                let _ = write!(s, "AllowedIPs = {allowed}/32\nEndpoint = {endpoint}\n");
            }
            None => {
                let _ = writeln!(s, "AllowedIPs = {}/32", peer_allowed_ip(i));
            }
        }
    }
    s
}

/// Everything a trial needs.
struct Ctx<'a> {
    opts: &'a Options,
    names: &'a RunNames,
    hosts: &'a TwoHosts,
    dir: &'a PrivateDir,
    logs: PathBuf,
    tck: f64,
    rng: std::cell::RefCell<StdRng>,
    files: Cell<u32>,
}

impl Ctx<'_> {
    /// `[round 2/3] wireguard-go: tcp1 ...` then the outcome.
    fn step<T>(
        &self,
        round: u32,
        label: &str,
        what: &str,
        f: impl FnOnce() -> Result<(T, String)>,
    ) -> Result<T> {
        print!("[round {round}/{}] {label}: {what} ... ", self.opts.rounds);
        let _ = std::io::stdout().flush();
        match f() {
            Ok((v, summary)) => {
                println!("{summary}");
                Ok(v)
            }
            Err(e) => {
                println!("FAILED");
                Err(e)
            }
        }
    }

    /// A secret file in the private directory, unique per call.
    fn secret_file(&self, stem: &str, contents: &str) -> Result<PathBuf> {
        let n = self.files.get() + 1;
        self.files.set(n);
        self.dir.write_secret(&format!("{n:04}-{stem}"), contents)
    }

    fn log_path(&self, round: u32, label: &str, what: &str) -> PathBuf {
        self.logs.join(format!("r{round}-{label}-{what}.log"))
    }

    fn random_key(&self) -> String {
        let mut k = [0u8; 32];
        self.rng.borrow_mut().fill_bytes(&mut k);
        hsflood::b64_encode(&k)
    }

    /// A random private key (base64) and its public key.
    fn key_pair(&self) -> (String, String) {
        let k = hsflood::random_key(&mut self.rng.borrow_mut());
        (
            hsflood::b64_encode(&k[..]),
            hsflood::b64_encode(&hsflood::public_of(&k)),
        )
    }

    /// Writes `text` to a secret file, runs `wg setconf`, removes the file.
    fn setconf(&self, d: &Daemon, ns: &Namespace, stem: &str, text: &str) -> Result<Duration> {
        let file = self.secret_file(stem, text)?;
        let took = d.setconf(ns, &file);
        let _ = std::fs::remove_file(&file);
        took
    }
}

/// Runs the benchmark; writes and prints the results (also the partial ones on error).
pub(crate) fn run(opts: &Options) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the tunnel benchmark must run as root (network namespaces, TUN devices): run \
             `sudo -E cargo xtask bench` (or `--no-tunnel` for the micro-benchmarks only)"
        );
    }
    cmd::require_tools(&["ip", "ping", "wg", "iperf3", "ss"])?;
    if opts.impls.is_empty() {
        bail!("no implementation to measure (check --only)");
    }
    netns::warn_stale(&[TAG]);
    let names = RunNames::new(TAG)?;
    let logs = opts.out_dir.join("logs");
    std::fs::create_dir_all(&logs)
        .with_context(|| format!("could not create {}", logs.display()))?;

    let labels: Vec<String> = opts.impls.iter().map(|i| i.label.clone()).collect();
    let reference = if labels.iter().any(|l| l == OURS) {
        OURS.to_owned()
    } else {
        labels[0].clone()
    };
    let mut results = Results {
        labels,
        reference,
        metrics: report::metric_defs(if opts.tests.rss { &opts.rss_peers } else { &[] }),
        samples: Vec::new(),
    };
    let started = unix_now();
    let load_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bench: {} round(s) of {} ({} s per iperf3 test); namespaces {1}a/{1}b; results and \
         daemon logs in {}",
        opts.rounds,
        names.prefix(),
        opts.duration,
        opts.out_dir.display()
    );
    let t0 = Instant::now();
    let outcome = with_hosts(opts, &names, &logs, &mut results);
    // Every guard is dropped by now: verify.
    netns::report_leftovers(&names, "bench");

    let mut meta = serde_json::Map::new();
    meta.insert("command".into(), json!(opts.command_line));
    meta.insert("started_unix".into(), json!(started));
    meta.insert("wall_s".into(), json!(t0.elapsed().as_secs_f64()));
    meta.insert("machine".into(), machine_info());
    meta.insert("loadavg_start".into(), json!(load_start.trim()));
    meta.insert(
        "loadavg_end".into(),
        json!(
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        ),
    );
    meta.insert(
        "options".into(),
        json!({
            "rounds": opts.rounds, "duration_s": opts.duration,
            "tests": format!("{:?}", opts.tests), "rss_peers": opts.rss_peers,
            "hs_peers": HS_PEERS, "hs_initiations": HS_INITIATIONS, "hs_seconds": HS_SECONDS,
            "hs_flood_binary": opts.flood_exe, "hs_window": opts.hs_window,
            "paced_rate_mbps": opts.paced_rate,
            "implementations": opts.impls.iter().map(|i| {
                let command = match &i.kind {
                    Kind::Daemon(t) => t.as_str(),
                    Kind::Plain => "(none: plain veth)",
                };
                json!({"label": i.label, "command": command})
            }).collect::<Vec<_>>(),
        }),
    );
    meta.insert(
        "versions".into(),
        Value::Object(
            opts.versions
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect(),
        ),
    );
    if let Err(e) = &outcome {
        meta.insert("aborted".into(), json!(format!("{e:#}")));
    }
    let header = markdown_header(opts, &results, outcome.as_ref().err());
    let written = report::write_files(&opts.out_dir, &results, &meta, &header);

    println!();
    println!(
        "Medians over {} round(s); (xN) = ratio to {}; (+) higher is better, (-) lower is better:",
        opts.rounds, results.reference
    );
    print!("{}", results.render_text());
    let peaks = results.render_process_peaks(RSS_TARGET_MIB);
    if !peaks.is_empty() {
        println!(
            "Peak RSS (VmHWM) per process under load (comm@depth in the daemon's tree; target < \
             {RSS_TARGET_MIB:.0} MiB):"
        );
        print!("{peaks}");
    }
    let failed: Vec<String> = results
        .samples
        .iter()
        .flat_map(|s| {
            s.errors
                .iter()
                .map(move |e| format!("round {} {}: {e}", s.round, s.label))
        })
        .collect();
    if !failed.is_empty() {
        println!("Failures:");
        for f in &failed {
            println!("  {}", f.lines().next().unwrap_or_default());
        }
    }
    match written {
        Ok((json_path, md_path)) => println!(
            "bench: results: {}\nbench: markdown: {}\nbench: daemon logs: {}",
            json_path.display(),
            md_path.display(),
            logs.display()
        ),
        Err(e) => eprintln!("bench: could not write the results: {e:#}"),
    }
    outcome?;
    if !failed.is_empty() {
        bail!(
            "{} part(s) of the benchmark failed (recorded with --keep-going; see Failures \
             above and the daemon logs)",
            failed.len()
        );
    }
    Ok(())
}

fn markdown_header(opts: &Options, results: &Results, error: Option<&anyhow::Error>) -> String {
    let m = machine_info();
    let mut s = format!(
        "# Tunnel benchmark\n\nCommand: `{}`\n\nMachine: {} CPUs (`nproc`), kernel {}, {}.\n\n",
        opts.command_line,
        m["nproc"],
        m["kernel"].as_str().unwrap_or("?"),
        m["cpu_model"].as_str().unwrap_or("?"),
    );
    if !opts.versions.is_empty() {
        s.push_str("Versions: ");
        let v: Vec<String> = opts
            .versions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        s.push_str(&v.join("; "));
        s.push_str(".\n\n");
    }
    let _ = writeln!(
        s,
        "Each cell is the median over {} round(s) (implementations interleaved round by round), \
         with the ratio to {} in brackets. (+) higher is better, (-) lower is better.",
        opts.rounds, results.reference
    );
    if let Some(e) = error {
        let _ = writeln!(
            s,
            "\n**The run was aborted:** {}",
            format!("{e:#}").lines().next().unwrap_or_default()
        );
    }
    s
}

/// `nproc`, kernel release and CPU model.
fn machine_info() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpu_model": cpu,
    })
}

fn with_hosts(opts: &Options, names: &RunNames, logs: &Path, results: &mut Results) -> Result<()> {
    let hosts = TwoHosts::create(names)?;
    // The flood's source addresses: local in A, routed back from B.
    hosts
        .a
        .ip(&["route", "add", "local", hsflood::SOURCE_NET, "dev", "lo"])?;
    hosts
        .b
        .ip(&["route", "add", hsflood::SOURCE_NET, "via", UNDERLAY_A])?;
    let dir = PrivateDir::create(names.prefix())?;
    let ctx = Ctx {
        opts,
        names,
        hosts: &hosts,
        dir: &dir,
        logs: logs.to_path_buf(),
        tck: measure::clock_ticks(),
        rng: std::cell::RefCell::new(rand::make_rng()),
        files: Cell::new(0),
    };
    for round in 1..=opts.rounds {
        for imp in &opts.impls {
            let mut sample = Sample {
                round,
                label: imp.label.clone(),
                ..Sample::default()
            };
            let r = trial(&ctx, imp, round, &mut sample);
            if let Err(e) = &r {
                sample.errors.push(format!("{e:#}"));
            }
            results.samples.push(sample);
            if let Err(e) = r {
                return Err(e.context(format!("{} failed in round {round}", imp.label)));
            }
        }
    }
    Ok(())
}

/// One implementation in one round: the tunnel tests, then the single-daemon tests.
/// With `--keep-going`, a failing part is recorded in `sample.errors` (and printed) and
/// the next part still runs; otherwise, or on Ctrl-C, the error is returned.
fn trial(ctx: &Ctx<'_>, imp: &Impl, round: u32, sample: &mut Sample) -> Result<()> {
    let tests = ctx.opts.tests;
    let mut parts: Vec<Result<()>> = Vec::new();
    match &imp.kind {
        Kind::Plain => {
            if tests.tunnel() {
                parts.push(traffic_tests(ctx, imp, round, sample, UNDERLAY_B, None));
            }
        }
        Kind::Daemon(template) => {
            if tests.tunnel() {
                let r = tunnel_trial(ctx, imp, template, round, sample);
                let fatal = r.is_err() && (cmd::interrupted() || !ctx.opts.keep_going);
                parts.push(r);
                if fatal {
                    return parts.pop().unwrap_or(Ok(()));
                }
            }
            if tests.rss || tests.hs {
                parts.push(memory_trial(ctx, imp, template, round, sample));
            }
        }
    }
    for r in parts {
        if let Err(e) = r {
            if cmd::interrupted() || !ctx.opts.keep_going {
                return Err(e);
            }
            eprintln!(
                "bench: {} failed in round {round} (recorded, continuing: --keep-going): {e:#}",
                imp.label
            );
            sample.errors.push(format!("{e:#}"));
        }
    }
    Ok(())
}

/// A fresh tunnel pair of `imp`, the first ping, then the traffic tests.
fn tunnel_trial(
    ctx: &Ctx<'_>,
    imp: &Impl,
    template: &str,
    round: u32,
    sample: &mut Sample,
) -> Result<()> {
    let hosts = ctx.hosts;
    let label = &imp.label;
    let (ifa, ifb) = (ctx.names.name("wa")?, ctx.names.name("wb")?);
    let (mut da, mut db) = ctx.step(round, label, "start both ends", || {
        let da = Daemon::start(&hosts.a, template, &ifa, &ctx.log_path(round, label, "a"))?;
        let db = Daemon::start(&hosts.b, template, &ifb, &ctx.log_path(round, label, "b"))?;
        let (ka, pa) = ctx.key_pair();
        let (kb, pb) = ctx.key_pair();
        let ep_b = format!("{UNDERLAY_B}:{PORT}");
        let ep_a = format!("{UNDERLAY_A}:{PORT}");
        ctx.setconf(
            &da,
            &hosts.a,
            "a.conf",
            &config_text(&ka, PORT, &[pb], Some((TUNNEL_B, &ep_b))),
        )?;
        ctx.setconf(
            &db,
            &hosts.b,
            "b.conf",
            &config_text(&kb, PORT, &[pa], Some((TUNNEL_A, &ep_a))),
        )?;
        da.link_up(&hosts.a, Some(&format!("{TUNNEL_A}/24")))?;
        db.link_up(&hosts.b, Some(&format!("{TUNNEL_B}/24")))?;
        let summary = format!(
            "pids {} and {}, UAPI ready after {:.1} ms",
            da.pid(),
            db.pid(),
            da.startup.as_secs_f64() * 1e3
        );
        Ok(((da, db), summary))
    })?;
    sample
        .values
        .insert("startup_ms".into(), da.startup.as_secs_f64() * 1e3);

    // First ping: configured, no session yet; the echo request starts the handshake.
    let first = ctx.step(round, label, "first ping (handshake)", || {
        first_ping(ctx, &mut da, &mut db).map(|(ms, tries)| {
            let note = if tries > 1 {
                format!("{ms:.2} ms (after {tries} tries)")
            } else {
                format!("{ms:.2} ms")
            };
            ((ms, tries), note)
        })
    });
    let (ms, tries) = match first {
        Ok(v) => v,
        Err(e) => {
            let mut diag = String::new();
            for d in [&da, &db] {
                let _ = write!(
                    diag,
                    "\n--- wg show {}:\n{}\n--- log {}:\n{}",
                    d.ifname,
                    d.show().trim_end(),
                    d.log.display(),
                    d.log_tail(20)
                );
            }
            eprintln!("bench: {label}: TUNNEL NEVER CAME UP{diag}");
            return Err(e.context(format!(
                "the tunnel never came up (no ping reply through it within {} s); see \
                 the daemon logs above and in {}",
                FIRST_PING_TRIES * FIRST_PING_WAIT_S,
                ctx.logs.display()
            )));
        }
    };
    sample.values.insert("first_ping_ms".into(), ms);
    sample
        .details
        .insert("first_ping_tries".into(), json!(tries));

    traffic_tests(ctx, imp, round, sample, TUNNEL_B, Some((&mut da, &mut db)))?;

    // Peak RSS of every process after the loaded tests.
    let mut per_daemon = Vec::new();
    for (side, d) in [("a", &da), ("b", &db)] {
        let tree = measure::daemon_tree(d.pid());
        let hwm = measure::tree_hwm(&tree);
        per_daemon.push(hwm.iter().map(|(_, k)| *k).sum::<u64>());
        for (name, kib) in hwm {
            sample.procs.push(ProcPeak {
                side: side.to_owned(),
                name,
                vm_hwm_kib: kib,
            });
        }
    }
    #[allow(clippy::cast_precision_loss)]
    if let Some(max) = sample.procs.iter().map(|p| p.vm_hwm_kib).max() {
        sample
            .values
            .insert("peak_rss_proc_mib".into(), max as f64 / 1024.0);
        let daemon = per_daemon.into_iter().max().unwrap_or(0);
        sample
            .values
            .insert("peak_rss_daemon_mib".into(), daemon as f64 / 1024.0);
    }
    da.check_alive("the tests")?;
    db.check_alive("the tests")?;
    Ok(())
}

/// Pings B's tunnel address until a reply (at most [`FIRST_PING_TRIES`] tries of
/// [`FIRST_PING_WAIT_S`] s). Returns (ms, tries): ping's own RTT of the first echo request
/// if it was answered, else the wall time from the first request to the reply.
fn first_ping(ctx: &Ctx<'_>, da: &mut Daemon, db: &mut Daemon) -> Result<(f64, u32)> {
    let t0 = Instant::now();
    for attempt in 1..=FIRST_PING_TRIES {
        let (times, _) = measure::ping(&ctx.hosts.a, TUNNEL_B, 1, "1", FIRST_PING_WAIT_S)?;
        if let Some(&rtt) = times.first() {
            let ms = if attempt == 1 {
                rtt
            } else {
                t0.elapsed().as_secs_f64() * 1e3
            };
            return Ok((ms, attempt));
        }
        da.check_alive("tunnel bring-up")?;
        db.check_alive("tunnel bring-up")?;
    }
    bail!("no echo reply from {TUNNEL_B} after {FIRST_PING_TRIES} tries of {FIRST_PING_WAIT_S} s")
}

/// CPU ticks of the daemons' trees and of the machine, at one moment.
struct CpuMark {
    at: Instant,
    daemons: u64,
    machine: Option<u64>,
}

fn cpu_mark(pids: &[u32]) -> CpuMark {
    let all = measure::all_processes();
    let daemons = pids
        .iter()
        .map(|&p| measure::tree_cpu_ticks(&measure::tree_of(&all, p)))
        .sum();
    CpuMark {
        at: Instant::now(),
        daemons,
        machine: measure::machine_busy(),
    }
}

/// (daemon CPU seconds, machine busy cores) between two marks.
fn cpu_between(a: &CpuMark, b: &CpuMark, tck: f64) -> (f64, Option<f64>) {
    #[allow(clippy::cast_precision_loss)]
    let cpu = b.daemons.saturating_sub(a.daemons) as f64 / tck;
    let wall = b.at.saturating_duration_since(a.at).as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let busy = match (a.machine, b.machine) {
        (Some(x), Some(y)) if wall > 0.0 => Some(y.saturating_sub(x) as f64 / tck / wall),
        _ => None,
    };
    (cpu, busy)
}

/// Idle ping, TCP 1 stream (with ping alongside), TCP 4 streams, UDP; over the tunnel
/// (`daemons` given) or the plain veth.
fn traffic_tests(
    ctx: &Ctx<'_>,
    imp: &Impl,
    round: u32,
    sample: &mut Sample,
    target: &str,
    mut daemons: Option<(&mut Daemon, &mut Daemon)>,
) -> Result<()> {
    let tests = ctx.opts.tests;
    let label = &imp.label;
    let (a, b) = (&ctx.hosts.a, &ctx.hosts.b);
    let secs = ctx.opts.duration;
    let pids: Vec<u32> = daemons
        .as_ref()
        .map(|(x, y)| vec![x.pid(), y.pid()])
        .unwrap_or_default();
    let mut alive = |what: &str| -> Result<()> {
        if let Some((x, y)) = daemons.as_mut() {
            x.check_alive(what)?;
            y.check_alive(what)?;
        }
        Ok(())
    };

    if tests.ping {
        let avg = ctx.step(round, label, "ping idle (20 x 0.1 s)", || {
            let _ = measure::ping(a, target, 3, "0.2", 2)?;
            let (times, text) = measure::ping(a, target, 20, "0.1", 2)?;
            let avg = measure::mean(&times)
                .with_context(|| format!("no ping reply from {target}:\n{}", text.trim()))?;
            Ok((avg, format!("avg {avg:.3} ms, {}/20 replies", times.len())))
        })?;
        sample.values.insert("ping_idle_ms".into(), avg);
        alive("the idle ping")?;
    }

    let tcp = |streams: u32, with_ping: bool, rate: Option<u32>| {
        tcp_run(ctx, round, label, target, &pids, streams, with_ping, rate)
    };

    let paced = Some(ctx.opts.paced_rate);
    for (streams, run, rate) in [
        (1u32, tests.tcp1, None),
        (4, tests.tcp4, None),
        (1, tests.tcppaced, paced),
    ] {
        if !run {
            continue;
        }
        let with_ping = streams == 1;
        let key = match rate {
            Some(_) => "tcp1paced".to_owned(),
            None => format!("tcp{streams}"),
        };
        let what = match (with_ping, rate) {
            (true, Some(r)) => format!("{key} ({secs} s at {r} Mbit/s, ping alongside)"),
            (true, None) => format!("{key} ({secs} s, ping alongside)"),
            _ => format!("{key} ({secs} s)"),
        };
        let TcpRun {
            tcp: t,
            cpu_per_gb,
            busy,
            ping,
        } = ctx.step(round, label, &what, || {
            let r = tcp(streams, with_ping, rate)?;
            let TcpRun {
                tcp: t,
                cpu_per_gb,
                ping,
                ..
            } = &r;
            let mut s = format!("{:.1} Mbit/s", t.received_bps / 1e6);
            if let Some(rt) = t.retransmits {
                let _ = write!(s, ", {rt} retransmits");
            }
            if !pids.is_empty() {
                let _ = write!(s, ", {cpu_per_gb:.2} CPU-s/GB");
            }
            if let Some((m, n)) = ping {
                let _ = write!(s, ", ping avg {m:.2} ms ({n} replies)");
            }
            Ok((r, s))
        })?;
        sample
            .values
            .insert(format!("{key}_mbps"), t.received_bps / 1e6);
        if let Some(rt) = t.retransmits {
            #[allow(clippy::cast_precision_loss)]
            sample
                .values
                .insert(format!("{key}_retransmits"), rt as f64);
        }
        if !pids.is_empty() && cpu_per_gb.is_finite() {
            sample
                .values
                .insert(format!("cpu_s_per_gb_{key}"), cpu_per_gb);
        }
        if streams == 1 {
            if let Some(b) = busy {
                sample.values.insert(format!("busy_{key}_cores"), b);
            }
            if let Some((m, _)) = ping {
                let name = if rate.is_some() {
                    "ping_paced_ms"
                } else {
                    "ping_load_ms"
                };
                sample.values.insert(name.into(), m);
            }
        }
        sample
            .details
            .insert(format!("{key}_received_bytes"), json!(t.received_bytes));
        alive(&key)?;
        cmd::sleep(PAUSE)?;
    }

    if tests.udp {
        let (u, cpu_s) = ctx.step(round, label, &format!("udp 64 B ({secs} s)"), || {
            let log = ctx.log_path(round, label, "iperf3-udp-server");
            let server = IperfServer::start(b, &log)?;
            let before = cpu_mark(&pids);
            let json = measure::iperf_client(a, target, secs, &["-u", "-l", "64", "-b", "0"]);
            let after = cpu_mark(&pids);
            server.finish();
            let u = measure::parse_iperf_udp(&json?)?;
            let cpu_s = (!pids.is_empty()).then(|| cpu_between(&before, &after, ctx.tck).0);
            let mut s = format!(
                "{:.1} kpackets/s received ({:.1} sent, {:.1} % lost)",
                u.rx_pps / 1e3,
                u.tx_pps / 1e3,
                u.loss_pct
            );
            if let Some(us) = cpu_s.and_then(|c| measure::cpu_us_per_udp_packet(c, &u)) {
                let _ = write!(s, ", {us:.2} CPU-us/packet received");
            }
            Ok(((u, cpu_s), s))
        })?;
        sample.values.insert("udp_rx_kpps".into(), u.rx_pps / 1e3);
        sample.values.insert("udp_loss_pct".into(), u.loss_pct);
        if let Some(c) = cpu_s {
            if let Some(us) = measure::cpu_us_per_udp_packet(c, &u) {
                sample.values.insert(report::UDP_CPU_KEY.into(), us);
            }
            sample.details.insert("udp_daemon_cpu_s".into(), json!(c));
        }
        sample
            .details
            .insert("udp_tx_kpps".into(), json!(u.tx_pps / 1e3));
        sample
            .details
            .insert("udp_received_packets".into(), json!(u.rx_packets));
        alive("udp")?;
        cmd::sleep(PAUSE)?;
    }
    Ok(())
}

/// One TCP test's figures.
struct TcpRun {
    tcp: measure::Tcp,
    /// Daemon CPU seconds (both trees) per GB received; NaN without daemons.
    cpu_per_gb: f64,
    /// Machine busy cores during the test.
    busy: Option<f64>,
    /// Ping alongside: average ms and replies.
    ping: Option<(f64, usize)>,
}

/// iperf3 TCP A→B with `streams` streams (at `rate` Mbit/s if given; and ping alongside
/// if asked), with CPU marks of the daemon trees `pids` around it.
#[allow(clippy::too_many_arguments)]
fn tcp_run(
    ctx: &Ctx<'_>,
    round: u32,
    label: &str,
    target: &str,
    pids: &[u32],
    streams: u32,
    with_ping: bool,
    rate: Option<u32>,
) -> Result<TcpRun> {
    let (a, b) = (&ctx.hosts.a, &ctx.hosts.b);
    let secs = ctx.opts.duration;

    let log = ctx.log_path(round, label, &format!("iperf3-tcp{streams}-server"));
    let server = IperfServer::start(b, &log)?;
    let parallel = streams.to_string();
    let bitrate = rate.map(|r| format!("{r}M"));
    let mut extra: Vec<&str> = if streams > 1 {
        vec!["-P", &parallel]
    } else {
        vec![]
    };
    if let Some(b) = &bitrate {
        extra.extend(["-b", b]);
    }
    let before = cpu_mark(pids);
    let (json, load_ping) = std::thread::scope(|s| {
        let pinger = with_ping.then(|| {
            s.spawn(|| -> Result<Vec<f64>> {
                cmd::sleep(Duration::from_millis(500))?;
                let count = (secs * 5).saturating_sub(5).max(1);
                Ok(measure::ping(a, target, count, "0.2", 2)?.0)
            })
        });
        let json = measure::iperf_client(a, target, secs, &extra);
        let pings = pinger.map(|h| h.join().unwrap_or_else(|_| Ok(Vec::new())));
        (json, pings)
    });
    let after = cpu_mark(pids);
    server.finish();
    let t = measure::parse_iperf_tcp(&json?)?;
    let (cpu_s, busy) = cpu_between(&before, &after, ctx.tck);
    let cpu_per_gb = measure::cpu_per_delivered(cpu_s, t.received_bytes / 1e9).unwrap_or(f64::NAN);
    let ping = match load_ping {
        Some(r) => {
            let times = r?;
            measure::mean(&times).map(|m| (m, times.len()))
        }
        None => None,
    };
    Ok(TcpRun {
        tcp: t,
        cpu_per_gb,
        busy,
        ping,
    })
}

/// A daemon in B alone: idle RSS with each peer count, and the handshake flood with
/// [`HS_PEERS`] peers whose private keys we know.
fn memory_trial(
    ctx: &Ctx<'_>,
    imp: &Impl,
    template: &str,
    round: u32,
    sample: &mut Sample,
) -> Result<()> {
    let tests = ctx.opts.tests;
    let mut plan: Vec<(u32, bool, bool)> = Vec::new();
    if tests.rss {
        for &n in &ctx.opts.rss_peers {
            plan.push((n, true, tests.hs && n == HS_PEERS));
        }
    }
    if tests.hs && !plan.iter().any(|p| p.2) {
        plan.push((HS_PEERS, false, true));
    }
    let max_peers = ctx.opts.rss_peers.iter().copied().max().unwrap_or(0);
    let ifname = ctx.names.name("wm")?;
    let b = &ctx.hosts.b;
    for (n, rss, hs) in plan {
        let what = match (rss, hs) {
            (true, true) => format!(
                "idle RSS with {} peers, then handshake flood",
                report::thousands(n.into())
            ),
            (true, false) => format!("idle RSS with {} peers", report::thousands(n.into())),
            _ => format!(
                "handshake flood against {} peers",
                report::thousands(n.into())
            ),
        };
        ctx.step(round, &imp.label, &what, || {
            let log = ctx.log_path(round, &imp.label, &format!("m{n}"));
            let mut d = Daemon::start(b, template, &ifname, &log)?;
            let flood = hs.then(|| hsflood::make_setup(n as usize, &mut ctx.rng.borrow_mut()));
            let (private, publics) = match &flood {
                Some(f) => (f.responder_private.clone(), f.initiator_publics.clone()),
                None => (ctx.random_key(), (0..n).map(|_| ctx.random_key()).collect()),
            };
            let took = ctx.setconf(
                &d,
                b,
                "m.conf",
                &config_text(&private, RESPONDER_PORT, &publics, None),
            )?;
            d.link_up(b, None)?;
            let mut summary = String::new();
            if rss {
                cmd::sleep(SETTLE)?;
                d.check_alive("the idle RSS test")?;
                let tree = measure::daemon_tree(d.pid());
                let kib = measure::tree_rss_kib(&tree);
                let pss_kib = measure::tree_pss_kib(&tree);
                let got = d.peer_count()?;
                if got != n as usize {
                    bail!("{} reports {got} peers after wg setconf of {n}", d.ifname);
                }
                #[allow(clippy::cast_precision_loss)]
                let mib = kib as f64 / 1024.0;
                sample.values.insert(report::rss_key(n), mib);
                #[allow(clippy::cast_precision_loss)]
                sample
                    .values
                    .insert(report::pss_key(n), pss_kib as f64 / 1024.0);
                sample.details.insert(
                    format!("rss_idle_{n}_processes"),
                    json!(
                        tree.iter()
                            .map(|(p, d)| format!("{}@{d}", p.comm))
                            .collect::<Vec<_>>()
                    ),
                );
                if n == max_peers && n > 0 {
                    sample
                        .values
                        .insert("setconf_max_s".into(), took.as_secs_f64());
                }
                let _ = write!(
                    summary,
                    "{mib:.1} MiB (PSS {:.1}) over {} process(es), setconf {:.2} s",
                    pss_kib as f64 / 1024.0,
                    tree.len(),
                    took.as_secs_f64()
                );
            }
            if let Some(f) = &flood {
                let (per_s, cpu_ms, raw) = flood_run(ctx, &mut d, f)?;
                if !summary.is_empty() {
                    summary.push_str("; ");
                }
                let _ = write!(
                    summary,
                    "{per_s:.0} handshakes/s ({} valid of {} sent, {} cookie replies, {} lost), \
                     {cpu_ms:.3} CPU-ms each",
                    raw["valid_responses"],
                    raw["initiations_sent"],
                    raw["cookie_replies"],
                    raw["lost"]
                );
                sample.values.insert("hs_per_s".into(), per_s);
                if let Some(lost) = raw["lost"].as_f64() {
                    sample.values.insert("hs_lost".into(), lost);
                }
                if cpu_ms.is_finite() {
                    sample.values.insert("hs_cpu_ms".into(), cpu_ms);
                }
                sample.details.insert("hs_flood".into(), raw);
            }
            d.check_alive("the single-daemon tests")?;
            Ok(((), summary))
        })?;
    }
    Ok(())
}

/// Runs the flood from namespace A against the daemon `d` in B; returns (handshakes/s,
/// responder CPU ms per handshake, the flood's JSON).
fn flood_run(ctx: &Ctx<'_>, d: &mut Daemon, f: &hsflood::FloodSetup) -> Result<(f64, f64, Value)> {
    let keys = ctx.secret_file("initiators.keys", &f.keys_file_text)?;
    let exe = &ctx.opts.flood_exe;
    let endpoint = SocketAddr::new(UNDERLAY_B.parse()?, RESPONDER_PORT);
    let args = hsflood::child_args(
        f,
        endpoint,
        &keys,
        HS_INITIATIONS,
        HS_SECONDS,
        ctx.opts.hs_window,
    );
    let mut c = ctx.hosts.a.command(&exe.to_string_lossy(), &args);
    let before = cpu_mark(&[d.pid()]);
    let out = cmd::output(&mut c, Duration::from_secs(HS_SECONDS + 60));
    let after = cpu_mark(&[d.pid()]);
    let _ = std::fs::remove_file(&keys);
    let out = out?;
    cmd::ensure_success(&c, &out)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let raw: Value = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("the handshake flood printed no JSON: {}", text.trim()))?;
    let valid = raw["valid_responses"].as_f64().unwrap_or(0.0);
    if valid <= 0.0 {
        d.check_alive("the handshake flood")?;
        bail!(
            "the responder completed no handshake out of {} initiations: {raw}; its log ({}):\n{}",
            raw["initiations_sent"],
            d.log.display(),
            d.log_tail(10)
        );
    }
    let per_s = raw["handshakes_per_s"].as_f64().unwrap_or(0.0);
    let (cpu_s, _) = cpu_between(&before, &after, ctx.tck);
    Ok((per_s, cpu_s * 1e3 / valid, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_795_000_000 + 3_661), "20261118-120741");
    }

    #[test]
    fn test_lists() {
        assert_eq!(
            Tests::parse("ping,tcp1,tcp4,tcppaced,udp,rss,hs").unwrap(),
            Tests::ALL
        );
        let t = Tests::parse("hs").unwrap();
        assert!(t.hs && !t.tunnel());
        assert!(Tests::parse("tcp1, udp").unwrap().tunnel());
        assert!(Tests::parse("tcp2").is_err());
        assert!(Tests::parse("").is_err());
    }

    #[test]
    fn names_fit_interfaces() {
        // The longest pid (pid_max 4194304) still leaves room for the role suffixes.
        let prefix = format!("{TAG}4194304");
        for suffix in ["a", "b", "va", "vb", "wa", "wb", "wm"] {
            assert!(
                prefix.len() + suffix.len() <= netns::IFNAME_MAX,
                "{prefix}{suffix}"
            );
        }
        let n = RunNames::new(TAG).unwrap();
        assert!(n.prefix().starts_with(TAG));
        assert!(n.owns(&n.name("wm").unwrap()));
    }

    #[test]
    fn setconf_files() {
        let t = config_text(
            "PRIV",
            51820,
            &["PUB".into()],
            Some(("10.204.0.2", "10.203.0.2:51820")),
        );
        assert_eq!(
            t,
            "[Interface]\nPrivateKey = PRIV\nListenPort = 51820\n\n[Peer]\nPublicKey = PUB\n\
             AllowedIPs = 10.204.0.2/32\nEndpoint = 10.203.0.2:51820\n"
        );
        let many: Vec<String> = (0..300).map(|i| format!("K{i}")).collect();
        let t = config_text("P", 1, &many, None);
        assert_eq!(t.matches("[Peer]").count(), 300);
        assert!(t.contains("PublicKey = K299\nAllowedIPs = 10.64.1.43/32\n"));
        assert_eq!(peer_allowed_ip(0), Ipv4Addr::new(10, 64, 0, 0));
        assert_eq!(peer_allowed_ip(10_000), Ipv4Addr::new(10, 64, 39, 16));
    }

    #[test]
    fn out_dirs_do_not_collide() {
        let base = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        let a = create_out_dir(&base, "20260101-000000").unwrap();
        let b = create_out_dir(&base, "20260101-000000").unwrap();
        assert_ne!(a, b);
        assert!(b.to_string_lossy().ends_with("-2"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
