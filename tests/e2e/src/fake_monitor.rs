//! The real key process (`wireguard-rs-keyd`, sandboxed as in production) with this test
//! process as its monitor and as a data plane that may lie, flood or stall: the harness of
//! `tests/hostile_datad.rs`.
//!
//! [`Keyd::start`] does what the monitor does (`crates/keyd/src/lib.rs` `run_worker`): a
//! `SOCK_SEQPACKET` pair whose child end keyd inherits as `WG_RS_IPC_FD`, the hellos,
//! `Start` with a UAPI listener bound in the test's private directory and keyd's end of a
//! second pair, whose other end the test keeps to play datad ([`FakeDatad`]). A task plays
//! the rest of the monitor: it grants every `Reconfigure` and records every
//! `RestartDataPlane` ([`Keyd::next_restart`]); [`Keyd::restart_data_plane`] hands keyd a
//! fresh data-plane channel as the monitor does after a restart.
//!
//! Everything async here needs a tokio runtime driven by the thread that called
//! [`Keyd::start`]: keyd dies with the thread that started it (`PR_SET_PDEATHSIG`), so that
//! thread must outlive it. keyd is stopped by the PID we started when [`Keyd`] is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wg_ipc::messages::{
    DatadToKeyd, Hello, KeydToDatad, KeydToMonitor, Misbehaviour, MonitorToKeyd, PeerStats, Role,
    STATS_PER_MESSAGE,
};
use wg_ipc::{Channel, IPC_FD_ENV, make_inheritable, seqpacket_pair};
use wg_netns::cmd::Background;
use wg_wire::PublicKey;

use crate::env::{Env, Keys};
use crate::proc::Status;

/// The user keyd switches to: a dedicated `wireguard-rs-keyd` where packagers created one,
/// else the daemon's default (`nobody`).
pub fn keyd_user() -> &'static str {
    const DEDICATED: &str = "wireguard-rs-keyd";
    if nix::unistd::User::from_name(DEDICATED)
        .ok()
        .flatten()
        .is_some()
    {
        DEDICATED
    } else {
        "nobody"
    }
}

/// Held while a descriptor is inheritable and while this module starts other programs:
/// a child forked by another test thread meanwhile would inherit keyd's channel and keep
/// it open after keyd is gone.
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

fn spawn_lock() -> MutexGuard<'static, ()> {
    SPAWN_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`Env::keys`] under the spawn lock (`wg genkey` must not inherit a keyd channel).
pub fn keys(env: &Env, name: &str) -> Result<Keys> {
    let _guard = spawn_lock();
    env.keys(name)
}

/// The 32 bytes of a base64 key as `wg` prints it.
pub fn key_bytes(base64: &str) -> Result<[u8; 32]> {
    let hex = crate::wgtool::base64_to_hex(base64)?;
    let mut out = [0u8; 32];
    ensure!(hex.len() == 64, "key {base64:?} is not 32 bytes");
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

/// Lowercase hex, as UAPI carries keys.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A small deterministic generator for made-up keys, indices and garbage.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// xorshift64*.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A random u32.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Fills `buf`.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// 32 random bytes (a made-up public key).
    pub fn key(&mut self) -> [u8; 32] {
        let mut k = [0u8; 32];
        self.fill(&mut k);
        k
    }
}

/// What the monitor side saw from keyd.
#[derive(Clone, Debug)]
pub enum MonitorEvent {
    /// keyd asked for a new data plane.
    Restart {
        /// When it arrived.
        at: Instant,
        /// Why.
        reason: Misbehaviour,
        /// Which data plane (0: the first, then one more per `DataPlaneRestarted`).
        generation: u32,
    },
    /// keyd asked for new sockets (granted).
    Reconfigure {
        /// The port asked for.
        port: u16,
    },
    /// The monitor channel ended (keyd exited, or sent something undecodable).
    Closed {
        /// When.
        at: Instant,
        /// The channel's error.
        error: String,
    },
}

/// The real keyd under a fake monitor.
pub struct Keyd {
    bg: Background,
    /// keyd's PID.
    pub pid: u32,
    /// The monitor's end of the monitor channel.
    pub monitor: Arc<Channel>,
    /// The UAPI socket path (the listener keyd was given).
    pub uapi: PathBuf,
    /// keyd's standard error (`LOG_LEVEL=debug`).
    pub log: PathBuf,
    events: mpsc::UnboundedReceiver<MonitorEvent>,
    watcher: JoinHandle<()>,
    /// The current data plane's generation: how many `DataPlaneRestarted` were sent.
    generation: u32,
    /// Events taken by [`Keyd::next_restart`] or [`Keyd::restarts_so_far`], for reports.
    pub seen: Vec<MonitorEvent>,
}

impl std::fmt::Debug for Keyd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyd")
            .field("pid", &self.pid)
            .field("uapi", &self.uapi)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

/// How long keyd gets for start-up steps (exec, hello, sandbox).
const START_TIMEOUT: Duration = Duration::from_secs(20);

impl Keyd {
    /// Starts `<rs_dir>/wireguard-rs-keyd --user USER` as the monitor would and returns it
    /// with the test's end of its first data-plane channel (keyd's `Hello` not yet read).
    pub async fn start(env: &Env) -> Result<(Self, Channel)> {
        let bin = env.rs_dir.join("wireguard-rs-keyd");
        let log = env.dir.path().join(env.file_name("keyd", "log"));
        let uapi = env.dir.path().join(env.file_name("uapi", "sock"));
        let listener =
            UnixListener::bind(&uapi).with_context(|| format!("binding {}", uapi.display()))?;
        let (ours, theirs) = seqpacket_pair().context("monitor channel")?;
        let user = keyd_user();
        let bg = {
            let _guard = spawn_lock();
            make_inheritable(&theirs)?;
            let mut c = std::process::Command::new(&bin);
            c.args(["--user", user])
                .env(
                    IPC_FD_ENV,
                    std::os::fd::AsRawFd::as_raw_fd(&theirs).to_string(),
                )
                .env("LOG_LEVEL", "debug")
                .env_remove("WG_TUN_FD")
                .env_remove("WG_UAPI_FD");
            let bg = Background::spawn("wireguard-rs-keyd", &mut c, Some(&log));
            drop(theirs);
            bg?
        };
        let pid = bg.pid();
        let monitor = Arc::new(Channel::from_fd(ours)?);
        let mut keyd = Self {
            bg,
            pid,
            monitor: monitor.clone(),
            uapi,
            log,
            events: mpsc::unbounded_channel().1,
            watcher: tokio::spawn(async {}),
            generation: 0,
            seen: Vec::new(),
        };
        let datad = keyd
            .handshake(listener, env.names.prefix())
            .await
            .with_context(|| keyd.diag())?;
        let (tx, rx) = mpsc::unbounded_channel();
        keyd.events = rx;
        keyd.watcher = tokio::spawn(watch_monitor(monitor, tx));
        Ok((keyd, datad))
    }

    async fn handshake(&self, listener: UnixListener, interface: &str) -> Result<Channel> {
        let hello = tokio::time::timeout(START_TIMEOUT, self.monitor.recv::<KeydToMonitor>())
            .await
            .context("no Hello from keyd")??;
        match hello.msg {
            KeydToMonitor::Hello(h) => h.check(Role::Keyd)?,
            other => bail!("keyd's first message is {other:?}, not Hello"),
        }
        self.monitor
            .send(&MonitorToKeyd::Hello(Hello::new(Role::Monitor)), &[])
            .await?;
        let (datad_ours, datad_keyd) = seqpacket_pair().context("data-plane channel")?;
        let listener_fd = OwnedFd::from(listener);
        self.monitor
            .send(
                &MonitorToKeyd::Start {
                    interface: interface.to_owned(),
                    listen_port: 51820,
                },
                &[listener_fd.as_fd(), datad_keyd.as_fd()],
            )
            .await?;
        Ok(Channel::from_fd(datad_ours)?)
    }

    /// Hands keyd a fresh data-plane channel (`DataPlaneRestarted`), as the monitor does
    /// after starting a new data plane; returns the test's end.
    pub async fn restart_data_plane(&mut self) -> Result<Channel> {
        let (ours, theirs) = seqpacket_pair().context("data-plane channel")?;
        self.monitor
            .send(&MonitorToKeyd::DataPlaneRestarted, &[theirs.as_fd()])
            .await
            .context("sending DataPlaneRestarted")?;
        self.generation += 1;
        Ok(Channel::from_fd(ours)?)
    }

    /// The next `RestartDataPlane` within `timeout`: its reason and arrival time. It must
    /// name the current data plane's generation. Other events are kept in [`Keyd::seen`];
    /// a closed monitor channel is an error.
    pub async fn next_restart(&mut self, timeout: Duration) -> Result<(Misbehaviour, Instant)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| {
                    anyhow!(
                        "keyd sent no RestartDataPlane within {timeout:?} on the monitor channel"
                    )
                })?
                .context("the monitor watcher ended")?;
            self.seen.push(ev.clone());
            match ev {
                MonitorEvent::Restart {
                    at,
                    reason,
                    generation,
                } => {
                    ensure!(
                        generation == self.generation,
                        "RestartDataPlane({reason:?}) names data plane generation {generation}, \
                         but the current one is generation {}",
                        self.generation
                    );
                    return Ok((reason, at));
                }
                MonitorEvent::Closed { error, .. } => {
                    bail!("the monitor channel closed instead: {error}")
                }
                MonitorEvent::Reconfigure { .. } => {}
            }
        }
    }

    /// The `RestartDataPlane` reasons that arrived and were not yet taken.
    pub fn restarts_so_far(&mut self) -> Vec<Misbehaviour> {
        let mut out = Vec::new();
        while let Ok(ev) = self.events.try_recv() {
            if let MonitorEvent::Restart { reason, .. } = ev {
                out.push(reason);
            }
            self.seen.push(ev);
        }
        out
    }

    /// `Err` with keyd's exit status if it is no longer running.
    pub fn ensure_alive(&mut self) -> Result<()> {
        match self.bg.poll_exit()? {
            None => Ok(()),
            Some(status) => bail!(
                "keyd (pid {}) exited: {status}; log tail:\n{}",
                self.pid,
                self.bg.log_tail(30)
            ),
        }
    }

    /// `VmRSS` and `VmHWM` (peak) of keyd in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        let st = Status::read(self.pid)?;
        let kib = |field: &str| -> Result<u64> {
            let v = st.get(field)?;
            v.trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("{field} {v:?}"))
        };
        Ok((kib("VmRSS")?, kib("VmHWM")?))
    }

    /// The last `lines` lines of keyd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.bg.log_tail(lines)
    }

    /// The lines of keyd's log containing any of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| needles.iter().any(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    /// keyd's PID, log path and its last lines, for failure messages: the last 25 lines
    /// above debug level (the ones that say what keyd decided), then the last 5 of all.
    pub fn diag(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = |v: &[&str], n: usize| v[v.len().saturating_sub(n)..].join("\n");
        let important: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
            .collect();
        format!(
            "keyd pid {}, log {} (set {KEEP_LOGS_ENV}=DIR to keep it); last lines above \
             debug:\n{}\nlast lines:\n{}",
            self.pid,
            self.log.display(),
            tail(&important, 25),
            tail(&lines, 5)
        )
    }

    /// A UAPI request on a blocking thread (so its timing does not depend on this
    /// runtime's other tasks); see [`uapi`].
    pub async fn uapi(&self, request: String, timeout: Duration) -> Result<UapiAnswer> {
        let path = self.uapi.clone();
        tokio::task::spawn_blocking(move || uapi(&path, request.as_bytes(), timeout))
            .await
            .context("UAPI client thread")?
    }

    /// [`Keyd::uapi`] as a task of its own, to await later.
    pub fn uapi_background(
        &self,
        request: String,
        timeout: Duration,
    ) -> JoinHandle<Result<UapiAnswer>> {
        let path = self.uapi.clone();
        tokio::task::spawn_blocking(move || uapi(&path, request.as_bytes(), timeout))
    }

    /// A UAPI request that must succeed (`errno=0`) within `timeout`.
    pub async fn uapi_ok(&self, request: String, timeout: Duration) -> Result<UapiAnswer> {
        let a = self.uapi(request, timeout).await?;
        ensure!(
            a.errno == Some(0),
            "UAPI answered errno {:?} after {:?}: {:?}",
            a.errno,
            a.took,
            a.text
        );
        Ok(a)
    }
}

/// Environment variable naming a directory where each keyd's log is copied when the test
/// ends (the private directory holding it is removed).
pub const KEEP_LOGS_ENV: &str = "WG_E2E_KEEP_KEYD_LOGS";

impl Drop for Keyd {
    fn drop(&mut self) {
        self.watcher.abort();
        // Background stops the process group of the PID we started.
        self.bg.stop(Duration::from_secs(2));
        if let Some(dir) = std::env::var_os(KEEP_LOGS_ENV) {
            let to = Path::new(&dir).join(format!("keyd-{}.log", self.pid));
            match std::fs::copy(&self.log, &to) {
                Ok(_) => eprintln!("wg-e2e: keyd's log kept as {}", to.display()),
                Err(e) => eprintln!("wg-e2e: cannot keep keyd's log as {}: {e}", to.display()),
            }
        }
    }
}

async fn watch_monitor(monitor: Arc<Channel>, events: mpsc::UnboundedSender<MonitorEvent>) {
    loop {
        match monitor.recv::<KeydToMonitor>().await {
            Ok(m) => match m.msg {
                KeydToMonitor::RestartDataPlane { reason, generation } => {
                    let _ = events.send(MonitorEvent::Restart {
                        at: Instant::now(),
                        reason,
                        generation,
                    });
                }
                KeydToMonitor::Reconfigure { port, .. } => {
                    let _ = events.send(MonitorEvent::Reconfigure { port });
                    let reply = MonitorToKeyd::Reconfigured { port, errno: 0 };
                    if let Err(e) = monitor.send(&reply, &[]).await {
                        let _ = events.send(MonitorEvent::Closed {
                            at: Instant::now(),
                            error: e.to_string(),
                        });
                        return;
                    }
                }
                KeydToMonitor::Hello(_) => {
                    let _ = events.send(MonitorEvent::Closed {
                        at: Instant::now(),
                        error: "keyd sent a second Hello".to_owned(),
                    });
                }
            },
            Err(e) => {
                let _ = events.send(MonitorEvent::Closed {
                    at: Instant::now(),
                    error: e.to_string(),
                });
                return;
            }
        }
    }
}

/// One UAPI exchange.
#[derive(Clone, Debug)]
pub struct UapiAnswer {
    /// The answer, up to and including `errno=N` and the empty line.
    pub text: String,
    /// `N` of `errno=N`.
    pub errno: Option<i64>,
    /// When the client connected.
    pub started: Instant,
    /// From connecting to the complete answer.
    pub took: Duration,
}

impl UapiAnswer {
    /// The values of every `key=` line.
    pub fn values(&self, key: &str) -> Vec<&str> {
        let prefix = format!("{key}=");
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }
}

/// Sends `request` (`get=1\n\n` or `set=1\n…\n\n`) to the UAPI socket at `path` and waits
/// up to `timeout` for the complete answer; no complete answer in time is an error.
pub fn uapi(path: &Path, request: &[u8], timeout: Duration) -> Result<UapiAnswer> {
    let start = Instant::now();
    let r = crate::uapi::request(path, request, false, timeout)?;
    let took = start.elapsed();
    ensure!(
        r.errno.is_some(),
        "no complete UAPI answer within {timeout:?} ({}; {} bytes so far: {:?})",
        if r.closed { "closed" } else { "timed out" },
        r.text.len(),
        r.text.chars().take(200).collect::<String>()
    );
    Ok(UapiAnswer {
        text: r.text,
        errno: r.errno,
        started: start,
        took,
    })
}

/// How the fake data plane treats keyd's `StatsRequest`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsPolicy {
    /// Answers at once with every peer keyd configured, zero counters.
    Honest,
    /// Hands the request id to the test ([`FakeDatad::next_stats_request`]).
    Forward,
}

/// What the fake data plane received from keyd.
#[derive(Clone, Debug, Default)]
pub struct DatadLog {
    /// Messages received, by kind.
    pub kinds: BTreeMap<&'static str, usize>,
    /// Our public key as keyd last announced it.
    pub interface: Option<Option<PublicKey>>,
    /// Peers keyd configured (and did not remove).
    pub peers: BTreeSet<[u8; 32]>,
    /// Every `SendHandshake`: when, for which peer.
    pub send_handshakes: Vec<(Instant, [u8; 32])>,
    /// Every `StatsRequest`: when it arrived, its id.
    pub stats_requests: Vec<(Instant, u32)>,
    /// When the reader finished sending its answers ([`StatsPolicy::Honest`]).
    pub stats_answered: Vec<Instant>,
    /// When and how the channel ended.
    pub closed: Option<(Instant, String)>,
}

impl DatadLog {
    /// `SendHandshake`s for `peer` at or after `since`.
    pub fn handshakes_for(&self, peer: &[u8; 32], since: Instant) -> Vec<Instant> {
        self.send_handshakes
            .iter()
            .filter(|(at, k)| k == peer && *at >= since)
            .map(|(at, _)| *at)
            .collect()
    }

    /// Messages of all kinds.
    pub fn total(&self) -> usize {
        self.kinds.values().sum()
    }
}

fn kind(m: &KeydToDatad) -> &'static str {
    match m {
        KeydToDatad::Hello(_) => "Hello",
        KeydToDatad::Interface { .. } => "Interface",
        KeydToDatad::Peer(_) => "Peer",
        KeydToDatad::RemovePeer { .. } => "RemovePeer",
        KeydToDatad::Session(_) => "Session",
        KeydToDatad::SendHandshake { .. } => "SendHandshake",
        KeydToDatad::StatsRequest { .. } => "StatsRequest",
        KeydToDatad::ClearPeers => "ClearPeers",
        KeydToDatad::AllowedIps { .. } => "AllowedIps",
        KeydToDatad::ExpireSessions => "ExpireSessions",
        KeydToDatad::HandshakesTaken { .. } => "HandshakesTaken",
    }
}

/// The test's data plane: a task reads everything keyd sends (recording it in
/// [`FakeDatad::log`]), answers `Hello`, and treats `StatsRequest` by its
/// [`StatsPolicy`]. The test sends whatever it likes on [`FakeDatad::channel`].
pub struct FakeDatad {
    /// The test's end of the keyd↔datad channel.
    pub channel: Arc<Channel>,
    log: Arc<Mutex<DatadLog>>,
    requests: mpsc::UnboundedReceiver<u32>,
    closed: tokio::sync::watch::Receiver<bool>,
    answering: Arc<AtomicUsize>,
    reader: JoinHandle<()>,
}

impl std::fmt::Debug for FakeDatad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDatad")
            .field("log", &self.log())
            .finish_non_exhaustive()
    }
}

impl Drop for FakeDatad {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl FakeDatad {
    /// Starts reading `channel`.
    pub fn spawn(channel: Channel, policy: StatsPolicy) -> Self {
        let channel = Arc::new(channel);
        let log = Arc::new(Mutex::new(DatadLog::default()));
        let (req_tx, requests) = mpsc::unbounded_channel();
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        let answering = Arc::new(AtomicUsize::new(0));
        let reader = tokio::spawn(read_keyd(
            channel.clone(),
            log.clone(),
            policy,
            req_tx,
            closed_tx,
            answering.clone(),
        ));
        Self {
            channel,
            log,
            requests,
            closed,
            answering,
            reader,
        }
    }

    /// Whether the reader is sending answers (a flood of the test's own should let them
    /// through first: keyd can only be blamed for what reaches it).
    pub fn answering(&self) -> bool {
        self.answering.load(Ordering::SeqCst) > 0
    }

    /// A copy of what was received so far.
    pub fn log(&self) -> DatadLog {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until keyd sent its `Hello` and `Interface` (or `timeout`).
    pub async fn wait_greeted(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.kinds.contains_key("Hello") && log.interface.is_some() {
                return Ok(());
            }
            if let Some((_, e)) = &log.closed {
                bail!("the data-plane channel ended before keyd's Hello and Interface: {e}");
            }
            ensure!(
                Instant::now() < deadline,
                "no Hello and Interface from keyd within {timeout:?}: {log:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until keyd announced `public_key` as the interface's key (`None`: no private
    /// key) and configured `peers` peers (or `timeout`).
    pub async fn wait_configured(
        &self,
        public_key: Option<[u8; 32]>,
        peers: usize,
        timeout: Duration,
    ) -> Result<()> {
        let want = Some(public_key.map(PublicKey));
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.peers.len() == peers && log.interface == want {
                return Ok(());
            }
            if let Some((_, e)) = &log.closed {
                bail!("the data-plane channel ended before keyd configured {peers} peers: {e}");
            }
            ensure!(
                Instant::now() < deadline,
                "keyd configured {} of {peers} peers and interface key {:?} (want {want:?}) \
                 within {timeout:?}",
                log.peers.len(),
                log.interface
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next `StatsRequest` id ([`StatsPolicy::Forward`]).
    pub async fn next_stats_request(&mut self, timeout: Duration) -> Result<u32> {
        tokio::time::timeout(timeout, self.requests.recv())
            .await
            .map_err(|_| anyhow!("no StatsRequest from keyd within {timeout:?}"))?
            .context("the data-plane channel ended before a StatsRequest")
    }

    /// Waits until keyd closed the channel (everything it queued was read first); returns
    /// when that was seen.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<Instant> {
        tokio::time::timeout(timeout, self.closed.wait_for(|c| *c))
            .await
            .map_err(|_| anyhow!("keyd did not close the data-plane channel within {timeout:?}"))?
            .map_err(|_| anyhow!("the reader task ended"))?;
        let log = self.log();
        let (at, e) = log.closed.context("closed without a record")?;
        if e != wg_ipc::IpcError::Closed.to_string() {
            bail!("the data-plane channel ended with an error, not a close: {e}");
        }
        Ok(at)
    }

    /// Whether keyd closed the channel yet.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Sends one message; `Ok(false)` if keyd closed the channel.
    pub async fn send(&self, msg: &DatadToKeyd) -> Result<bool> {
        match self.channel.send(msg, &[]).await {
            Ok(()) => Ok(true),
            Err(wg_ipc::IpcError::Closed) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// `Stats` chunks answering `request` with `peers` (zero counters), as an honest data plane.
pub fn honest_stats(request: u32, peers: &[[u8; 32]]) -> Vec<DatadToKeyd> {
    let all: Vec<PeerStats> = peers
        .iter()
        .map(|k| PeerStats {
            public_key: PublicKey(*k),
            endpoint: None,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
        })
        .collect();
    if all.is_empty() {
        return vec![DatadToKeyd::Stats {
            request,
            peers: Vec::new(),
            done: true,
        }];
    }
    let n = all.chunks(STATS_PER_MESSAGE).count();
    all.chunks(STATS_PER_MESSAGE)
        .enumerate()
        .map(|(i, c)| DatadToKeyd::Stats {
            request,
            peers: c.to_vec(),
            done: i + 1 == n,
        })
        .collect()
}

async fn read_keyd(
    channel: Arc<Channel>,
    log: Arc<Mutex<DatadLog>>,
    policy: StatsPolicy,
    requests: mpsc::UnboundedSender<u32>,
    closed: tokio::sync::watch::Sender<bool>,
    answering: Arc<AtomicUsize>,
) {
    let lock = || {
        log.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    loop {
        let m = match channel.recv::<KeydToDatad>().await {
            Ok(m) => m.msg,
            Err(e) => {
                lock().closed = Some((Instant::now(), e.to_string()));
                let _ = closed.send(true);
                return;
            }
        };
        let mut answer = Vec::new();
        {
            let mut l = lock();
            *l.kinds.entry(kind(&m)).or_default() += 1;
            match &m {
                KeydToDatad::Hello(_) => {
                    answer.push(DatadToKeyd::Hello(Hello::new(Role::Datad)));
                }
                KeydToDatad::Interface { public_key } => l.interface = Some(*public_key),
                KeydToDatad::Peer(p) => {
                    l.peers.insert(p.public_key.0);
                }
                KeydToDatad::RemovePeer { public_key } => {
                    l.peers.remove(&public_key.0);
                }
                KeydToDatad::ClearPeers => l.peers.clear(),
                KeydToDatad::SendHandshake { public_key, .. } => {
                    l.send_handshakes.push((Instant::now(), public_key.0));
                }
                KeydToDatad::StatsRequest { request } => {
                    l.stats_requests.push((Instant::now(), *request));
                    match policy {
                        StatsPolicy::Honest => {
                            let peers: Vec<[u8; 32]> = l.peers.iter().copied().collect();
                            answer.extend(honest_stats(*request, &peers));
                        }
                        StatsPolicy::Forward => {
                            let _ = requests.send(*request);
                        }
                    }
                }
                KeydToDatad::Session(_)
                | KeydToDatad::AllowedIps { .. }
                | KeydToDatad::ExpireSessions
                | KeydToDatad::HandshakesTaken { .. } => {}
            }
        }
        if answer.is_empty() {
            continue;
        }
        answering.fetch_add(1, Ordering::SeqCst);
        for a in &answer {
            // A failed send shows as a closed channel on the next receive.
            let _ = channel.send(a, &[]).await;
        }
        answering.fetch_sub(1, Ordering::SeqCst);
        if matches!(answer.first(), Some(DatadToKeyd::Stats { .. })) {
            lock().stats_answered.push(Instant::now());
        }
    }
}

/// Reads keyd's `Hello` (and nothing else) from a data-plane channel and answers it: a
/// data plane that then stops reading.
pub async fn greet(channel: &Channel, timeout: Duration) -> Result<()> {
    let m = tokio::time::timeout(timeout, channel.recv::<KeydToDatad>())
        .await
        .map_err(|_| {
            anyhow!("no Hello from keyd on the data-plane channel within {timeout:?}")
        })??;
    match m.msg {
        KeydToDatad::Hello(h) => h.check(Role::Keyd)?,
        other => bail!("keyd's first data-plane message is {other:?}, not Hello"),
    }
    channel
        .send(&DatadToKeyd::Hello(Hello::new(Role::Datad)), &[])
        .await?;
    Ok(())
}
