//! The launcher and supervisor (`wireguard-rs`): opens what needs privileges, starts the
//! two workers and from then on only watches them and performs the few privileged
//! operations the key process asks for.
//!
//! **Owns:** the TUN device and UDP sockets (it hands duplicates to the data plane and
//! keeps its own to restart it), the UAPI listener until keyd has it, the worker
//! processes (started with the interface's name for their logs, stopped in order on a stop
//! signal, which they themselves ignore), the verdict of the start (ready once the UAPI
//! socket answers `get=1`, told on the background start's readiness pipe and to systemd,
//! [`notify`]), the watch of the TUN's MTU (told to every data plane after its start and on
//! every change, [`mtu::MtuWatch`]), and the table of privileged requests:
//! [`KeydToMonitor::Reconfigure`] (new listen port, firewall mark) and nothing else. Its
//! decision is sans-IO ([`sockets::SocketOwner::handle_reconfigure`]) and shared with
//! `wg-embed`, which runs the same request table (and the same MTU watch) in one process.
//!
//! **Trusts:** its command line and environment (it runs as the administrator who started
//! it). Worker messages are checked against the table; a worker that breaks protocol is
//! treated as dead. keyd's death is fatal (fail closed); datad's is repaired by a restart.
//!
//! **May depend on:** ipc, tun, uapi (for the listener), socket2, nix, tokio. Never on
//! handshake, router or keyd/datad logic: the launcher binary holds no key code.
//!
//! **Platforms:** Linux, macOS, FreeBSD, NetBSD, each with its own TUN device
//! ([`device`]), UDP socket options ([`sockets`]: Linux's offloads and `SO_MARK`,
//! FreeBSD's `SO_USER_COOKIE`) and IPC transport ([`wg_ipc::pair`]: `SOCK_SEQPACKET`, or
//! framed `SOCK_STREAM` on macOS); the supervision is the same code everywhere. Only Linux
//! has run it (see the platform table in the README). On every other OS this crate
//! compiles to an empty library.
#![cfg(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
))]
#![forbid(unsafe_code)]

pub mod device;
pub mod mtu;
pub mod notify;
pub mod sockets;
pub mod spawner;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};
use wg_ipc::messages::{
    DatadToMonitor, Hello, KeydToMonitor, MonitorToDatad, MonitorToKeyd, MonitorToSpawner, Role,
    SpawnerToMonitor,
};
use wg_ipc::{Channel, IpcError, Received};

use crate::device::Tun;

pub use sockets::UdpSockets;

/// Name of the key process binary.
pub const KEYD_BINARY: &str = "wireguard-rs-keyd";
/// Name of the data-plane binary.
pub const DATAD_BINARY: &str = "wireguard-rs-datad";
/// Packagers may set this at build time to their libexec directory.
pub const BUILD_LIBEXEC_DIR: Option<&str> = option_env!("WIREGUARD_RS_LIBEXEC_DIR");
/// How long the start-up check of the UAPI socket (`get=1`) may take.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the interface's existence, its MTU and the UAPI socket file are checked.
const INTERFACE_POLL: Duration = Duration::from_secs(1);
/// More data-plane deaths than this within [`RESTART_WINDOW`] is a crash loop: give up.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(30);

/// Why the supervisor stopped.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// A worker binary could not be started.
    #[error(
        "cannot start {binary} ({path}): {source}; install it beside wireguard-rs or pass --libexec-dir"
    )]
    Spawn {
        /// Which binary.
        binary: &'static str,
        /// Where we looked.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The key process died: the interface is taken down (fail closed).
    #[error("the key process exited ({0}); taking the interface down")]
    KeydDied(String),
    /// The spawner died: no data plane could be restarted.
    #[error("the spawner process exited ({0}); taking the interface down")]
    SpawnerDied(String),
    /// The spawner could not start a data plane (its reason).
    #[error("cannot start the data plane: {0}")]
    SpawnFailed(String),
    /// The UAPI socket did not answer as a started daemon's does.
    #[error("the UAPI socket does not answer: {0}")]
    NotReady(String),
    /// The monitor's own sandbox could not be installed.
    #[error("cannot sandbox the monitor: {0}")]
    Sandbox(String),
    /// The data plane keeps dying.
    #[error("the data plane died {MAX_RESTARTS} times within {RESTART_WINDOW:?}; giving up")]
    CrashLoop,
    /// IPC with a worker failed.
    #[error("IPC with {0} failed: {1}")]
    Ipc(&'static str, IpcError),
    /// An OS call failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How the supervisor ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The interface was deleted.
    InterfaceGone,
    /// SIGTERM, SIGINT or SIGHUP.
    Signal,
    /// The UAPI socket file was deleted or replaced (as wireguard-go, which watches it and
    /// exits, so `rm /var/run/wireguard/IF.sock` stops the daemon).
    SocketGone,
}

/// Test builds only (feature `test-hooks`): set, the monitor makes every channel a framed
/// `SOCK_STREAM` pair ([`wg_ipc::stream_pair`], macOS's transport) instead of this
/// system's own, so the end-to-end tests run the daemon over it on Linux. (A seccomp
/// report, a raw datagram, does not fit a stream: the receiver then only sees the channel
/// break.)
#[cfg(feature = "test-hooks")]
pub const STREAM_IPC_TEST_ENV: &str = "WG_RS_TEST_STREAM_IPC";

/// A channel pair of the transport this system's daemon uses ([`wg_ipc::pair`]; see
/// [`STREAM_IPC_TEST_ENV`] for test builds). Each worker reads its end the way it was made
/// (`Channel::from_fd` asks the kernel).
fn channel_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(feature = "test-hooks")]
    if std::env::var_os(STREAM_IPC_TEST_ENV).is_some() {
        return wg_ipc::stream_pair();
    }
    wg_ipc::pair()
}

/// Where the worker binaries live: `--libexec-dir`, else the build-time setting, else
/// beside the running executable.
pub fn worker_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(dir) = flag {
        return dir.to_path_buf();
    }
    if let Some(dir) = BUILD_LIBEXEC_DIR {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Everything the supervisor starts with.
#[derive(Debug)]
pub struct Prepared {
    /// Interface name.
    pub interface: String,
    /// The TUN device.
    pub tun: Tun,
    /// The UAPI listener.
    pub uapi: UnixListener,
    /// The UDP sockets.
    pub sockets: UdpSockets,
    /// The UDP offloads wanted (for sockets bound later, on a port change).
    pub udp_offload: sockets::UdpOffload,
    /// Crypto helper threads of the data plane.
    pub crypto_threads: u16,
    /// Directory of the worker binaries.
    pub worker_dir: PathBuf,
    /// Arguments of the key process (its user, `--no-sandbox`).
    pub keyd_args: Vec<String>,
    /// Arguments of the spawner and the data planes it starts (their user,
    /// `--no-sandbox`).
    pub datad_args: Vec<String>,
    /// The UAPI socket's file, watched: deleting it stops the daemon. `None` when the
    /// listener was inherited from a caller that bound it elsewhere.
    pub socket_file: Option<PathBuf>,
    /// Whether listen ports below 1024 may be bound (`--no-low-ports` turns it off).
    pub low_ports: bool,
}

fn spawn(
    dir: &Path,
    binary: &'static str,
    args: &[String],
    interface: &str,
) -> Result<(Child, Channel), MonitorError> {
    let (ours, theirs) = channel_pair()?;
    let child =
        spawner::spawn_with_channel(&dir.join(binary), binary, args, theirs, Some(interface))?;
    Ok((child, Channel::from_fd(ours)?))
}

/// Checks, before anything starts, that the worker binaries are where they will be
/// started from, so a wrong `--libexec-dir` is reported by the command that was run.
pub fn check_worker_binaries(dir: &Path) -> Result<(), MonitorError> {
    for binary in [KEYD_BINARY, DATAD_BINARY] {
        let path = dir.join(binary);
        let found = std::fs::metadata(&path).and_then(|m| {
            use std::os::unix::fs::PermissionsExt;
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                Ok(())
            } else {
                Err(std::io::Error::other("not an executable file"))
            }
        });
        found.map_err(|source| MonitorError::Spawn {
            binary,
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Asks the UAPI socket at `path` what `wg show` asks (`get=1`) and wants `errno=0`: then
/// keyd serves it and the data plane answered keyd's statistics request.
async fn probe_uapi(path: &Path) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
        stream
            .write_all(b"get=1\n\n")
            .await
            .map_err(|e| format!("cannot send a request: {e}"))?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("cannot read the answer: {e}"))?;
            if n == 0 {
                return Err("the connection closed without an answer".to_owned());
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.ends_with(b"\n\n") {
                break;
            }
            if answer.len() > 1 << 20 {
                return Err("the answer is too long".to_owned());
            }
        }
        let text = String::from_utf8_lossy(&answer);
        match text.lines().rev().find(|l| l.starts_with("errno=")) {
            Some("errno=0") => Ok(()),
            Some(line) => Err(format!("it answered {line}")),
            None => Err("the answer has no errno line".to_owned()),
        }
    };
    tokio::time::timeout(READY_PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {READY_PROBE_TIMEOUT:?}"))?
}

pub(crate) fn describe(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match s.signal() {
            Some(sig) => {
                let name = nix::sys::signal::Signal::try_from(sig)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                format!("killed by {name}")
            }
            None => format!("exit status {}", s.code().unwrap_or(-1)),
        },
        Err(e) => format!("wait failed: {e}"),
    }
}

/// The running supervisor.
pub struct Supervisor {
    interface: String,
    tun: Tun,
    uapi: UnixListener,
    sockets: sockets::SocketOwner,
    worker_dir: PathBuf,
    keyd_args: Vec<String>,
    datad_args: Vec<String>,
    crypto_threads: u16,
    restarts: Vec<Instant>,
    /// Restarts so far: which data plane keyd's requests are about.
    datad_generation: u32,
    socket_file: Option<SocketFile>,
    mtu: mtu::MtuWatch,
}

/// The UAPI socket file as it was at start-up: its path and inode.
struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    fn identity_of(path: &Path) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path)?;
        Ok((meta.dev(), meta.ino()))
    }

    fn watch(path: PathBuf) -> Option<Self> {
        match Self::identity_of(&path) {
            Ok(identity) => Some(Self { path, identity }),
            Err(e) => {
                tracing::info!("not watching the UAPI socket file {}: {e}", path.display());
                None
            }
        }
    }

    /// Whether the file is still the one we bound. Only a definite answer counts: an error
    /// other than "not found" (which the sandbox should never cause) keeps the daemon up.
    fn is_gone(&self) -> bool {
        match Self::identity_of(&self.path) {
            Ok(identity) => identity != self.identity,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

/// Why keyd is gone, as precisely as it can be told: its channel may still hold the
/// report of a refused syscall even when its exit or a failed send was noticed first.
async fn keyd_died(error: Option<IpcError>, keyd: &Channel, child: &mut Child) -> MonitorError {
    let mut reason = error;
    if !matches!(reason, Some(IpcError::Seccomp { .. })) {
        // Drain what keyd sent before it died (bounded: the socket is closed or closing).
        let drain = async {
            loop {
                match keyd.recv::<KeydToMonitor>().await {
                    Ok(_) => continue,
                    Err(e) => return e,
                }
            }
        };
        if let Ok(e) = tokio::time::timeout(Duration::from_millis(500), drain).await
            && (matches!(e, IpcError::Seccomp { .. }) || reason.is_none())
        {
            reason = Some(e);
        }
    }
    let status = describe(child.wait().await);
    let message = match reason {
        Some(e) => format!("{e}; {status}"),
        None => status,
    };
    tracing::error!("the key process is gone: {message}");
    MonitorError::KeydDied(message)
}

/// Why the spawner is gone, as precisely as it can be told: a spawner that could not start
/// (e.g. its sandbox) says why in a `SpawnFailed` before it exits.
async fn spawner_gone(
    error: Option<IpcError>,
    spawner: &Channel,
    child: &mut Child,
) -> MonitorError {
    let drain = async {
        loop {
            match spawner.recv::<SpawnerToMonitor>().await {
                Ok(Received {
                    msg: SpawnerToMonitor::SpawnFailed { reason },
                    ..
                }) => return Some(reason),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    };
    let reason = tokio::time::timeout(Duration::from_millis(500), drain)
        .await
        .ok()
        .flatten();
    let status = describe(child.wait().await);
    match (reason, error) {
        (Some(reason), _) => MonitorError::SpawnerDied(format!("{status}: {reason}")),
        (None, Some(e)) => MonitorError::SpawnerDied(format!("{e}; {status}")),
        (None, None) => MonitorError::SpawnerDied(status),
    }
}

/// The stop signals: SIGTERM, SIGINT, SIGHUP.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
            _ = self.int.recv() => tracing::info!("SIGINT received"),
            _ = self.hup.recv() => tracing::info!("SIGHUP received"),
        }
    }
}

/// Has the spawner kill a data plane (its parent, which has not reaped it, so the pid is
/// still that data plane's). Its channel then closes and the usual restart follows.
async fn kill_datad(spawner: &Channel, pid: u32) -> Result<(), MonitorError> {
    spawner
        .send(&MonitorToSpawner::KillDatad { pid }, &[])
        .await
        .map_err(|e| MonitorError::Ipc("spawner", e))
}

/// Tells the data plane the TUN's MTU. A failure means the data plane is gone: its channel
/// closes, it is restarted, and the new one is told the MTU after its `Start`.
async fn send_mtu(datad: &DataPlane, mtu: u32) {
    if let Err(e) = datad.channel.send(&MonitorToDatad::Mtu { mtu }, &[]).await {
        tracing::warn!(
            "could not tell the data plane (pid {}) the MTU {mtu}: {e}",
            datad.pid
        );
    }
}

/// The data plane as the monitor sees it: a channel, and a pid the spawner reported.
struct DataPlane {
    channel: Channel,
    pid: u32,
}

impl Supervisor {
    /// A supervisor for prepared descriptors.
    pub fn new(prepared: Prepared) -> Self {
        #[cfg(feature = "test-hooks")]
        if std::env::var_os(STREAM_IPC_TEST_ENV).is_some() {
            tracing::warn!("test hook: every channel is a framed stream pair (macOS's transport)");
        }
        Self {
            interface: prepared.interface,
            tun: prepared.tun,
            uapi: prepared.uapi,
            sockets: sockets::SocketOwner {
                sockets: prepared.sockets,
                fwmark: 0,
                offload: prepared.udp_offload,
                low_ports: prepared.low_ports,
            },
            worker_dir: prepared.worker_dir,
            keyd_args: prepared.keyd_args,
            datad_args: prepared.datad_args,
            crypto_threads: prepared.crypto_threads,
            restarts: Vec::new(),
            datad_generation: 0,
            socket_file: prepared.socket_file.and_then(SocketFile::watch),
            mtu: mtu::MtuWatch::default(),
        }
    }

    /// Starts keyd, the spawner and (through it) the data plane, checks that the UAPI
    /// socket answers, runs `lockdown` (the monitor's own sandbox), tells `lifecycle` it is
    /// ready, and supervises until the interface goes away, a signal arrives, or keyd dies.
    /// On the way out, whatever the reason, `lifecycle` hears `STOPPING` and the workers are
    /// stopped before their channels close (so none reports a lost monitor); anything
    /// they started dies with them.
    pub async fn run(
        mut self,
        lockdown: impl FnOnce() -> Result<(), String>,
        lifecycle: &mut notify::Lifecycle,
    ) -> Result<Stopped, MonitorError> {
        // First, so a stop requested during start-up is not the default (silent) death
        // but a clean stop once the workers can be stopped in order.
        let mut signals = Signals::new()?;
        let (mut keyd_child, keyd) = spawn(
            &self.worker_dir,
            KEYD_BINARY,
            &self.keyd_args,
            &self.interface,
        )?;
        let mut spawner_child = None;
        // The data plane's channel outlives the spawner (whose death kills it), so the data
        // plane never sees the monitor go first.
        let mut datad_slot = None;
        let result = self
            .serve(
                lockdown,
                lifecycle,
                &mut signals,
                (&mut keyd_child, &keyd),
                (&mut spawner_child, &mut datad_slot),
            )
            .await;
        // A worker whose channel failed is gone or going: say how, not just "broken pipe".
        let result = match result {
            Err(MonitorError::Ipc("keyd", e)) => {
                Err(keyd_died(Some(e), &keyd, &mut keyd_child).await)
            }
            other => other,
        };
        let status = match &result {
            Ok(stopped) => format!("stopping: {stopped:?}"),
            Err(e) => format!("stopping: {e}"),
        };
        lifecycle.stopping(&status);
        // The spawner first: the data plane dies with it (its parent-death signal is
        // queued before the spawner can be reaped), so it never sees keyd or us go and
        // reports no lost peer; then keyd.
        for child in spawner_child.iter_mut().chain([&mut keyd_child]) {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
        }
        drop(datad_slot);
        result
    }

    async fn serve(
        &mut self,
        lockdown: impl FnOnce() -> Result<(), String>,
        lifecycle: &mut notify::Lifecycle,
        signals: &mut Signals,
        (keyd_child, keyd): (&mut Child, &Channel),
        (spawner_slot, datad_slot): (&mut Option<Child>, &mut Option<DataPlane>),
    ) -> Result<Stopped, MonitorError> {
        keyd.send(&MonitorToKeyd::Hello(Hello::new(Role::Monitor)), &[])
            .await
            .map_err(|e| MonitorError::Ipc("keyd", e))?;
        let (keyd_end, datad_end) = channel_pair()?;
        keyd.send(
            &MonitorToKeyd::Start {
                interface: self.interface.clone(),
                listen_port: self.sockets.sockets.port,
            },
            &[self.uapi.as_fd(), keyd_end.as_fd()],
        )
        .await
        .map_err(|e| MonitorError::Ipc("keyd", e))?;
        drop(keyd_end);

        // The spawner is this very program in its `--spawner` role.
        let exe = std::env::current_exe()?;
        let mut spawner_args = vec![
            "--spawner".to_owned(),
            "--libexec-dir".to_owned(),
            self.worker_dir.display().to_string(),
        ];
        spawner_args.extend(self.datad_args.iter().cloned());
        let (ours, theirs) = channel_pair()?;
        let spawner_child = spawner_slot.insert(spawner::spawn_with_channel(
            &exe,
            "wireguard-rs --spawner",
            &spawner_args,
            theirs,
            Some(&self.interface),
        )?);
        let spawner = Channel::from_fd(ours)?;
        let started = match spawner
            .send(&MonitorToSpawner::Hello(Hello::new(Role::Monitor)), &[])
            .await
        {
            Ok(()) => self.start_datad(&spawner, datad_end).await,
            Err(e) => Err(MonitorError::Ipc("spawner", e)),
        };
        let datad = match started {
            Ok(d) => datad_slot.insert(d),
            Err(MonitorError::Ipc("spawner", e)) => {
                return Err(spawner_gone(Some(e), &spawner, spawner_child).await);
            }
            Err(e) => return Err(e),
        };

        // Ready when `wg show` works: ask the UAPI socket what it asks. Meanwhile keyd and
        // the spawner are watched, so a worker that dies is named rather than timed out.
        if let Some(path) = self
            .uapi
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        {
            let probe = probe_uapi(&path);
            tokio::pin!(probe);
            loop {
                tokio::select! {
                    biased;
                    m = keyd.recv::<KeydToMonitor>() => match m {
                        Ok(m) => self.on_keyd(m.msg, keyd, datad, &spawner).await?,
                        Err(e) => return Err(keyd_died(Some(e), keyd, keyd_child).await),
                    },
                    _ = keyd_child.wait() => return Err(keyd_died(None, keyd, keyd_child).await),
                    m = spawner.recv::<SpawnerToMonitor>() => match m {
                        Ok(Received { msg: SpawnerToMonitor::Exited { pid, status }, .. }) => {
                            tracing::warn!("data plane pid {pid} {status}");
                        }
                        Ok(_) => {}
                        Err(e) => return Err(spawner_gone(Some(e), &spawner, spawner_child).await),
                    },
                    r = &mut probe => {
                        r.map_err(MonitorError::NotReady)?;
                        break;
                    }
                    () = signals.recv() => return Ok(Stopped::Signal),
                }
            }
        }

        let mut poll = tokio::time::interval(INTERFACE_POLL);
        lockdown().map_err(MonitorError::Sandbox)?;
        // The line first: whoever waits on the readiness pipe may read the log as soon as
        // it returns (seen as a flaky e2e test when the line came after).
        tracing::info!("ready: {}", lifecycle.status);
        lifecycle.ready();

        loop {
            tokio::select! {
                // keyd's channel first: a worker stopped by its filter reports the syscall
                // there just before it exits, and that report must win over the exit.
                biased;
                m = keyd.recv::<KeydToMonitor>() => match m {
                    Ok(m) => self.on_keyd(m.msg, keyd, datad, &spawner).await?,
                    Err(e) => return Err(keyd_died(Some(e), keyd, keyd_child).await),
                },
                _ = keyd_child.wait() => {
                    return Err(keyd_died(None, keyd, keyd_child).await);
                }
                m = datad.channel.recv::<DatadToMonitor>() => match m {
                    Ok(Received { msg: DatadToMonitor::InterfaceGone, .. }) => {
                        // Believed only when the device says so too: a data plane that
                        // lies about it must not stop the daemon with a success status.
                        if device::is_deleted(&self.tun) {
                            return Ok(Stopped::InterfaceGone);
                        }
                        tracing::warn!(
                            "data plane (pid {}) reported the interface gone, but it exists; replacing the data plane",
                            datad.pid
                        );
                        kill_datad(&spawner, datad.pid).await?;
                    }
                    Ok(Received { msg: DatadToMonitor::Hello(_), .. }) => {}
                    Err(e) => {
                        tracing::warn!("data plane (pid {}) lost: {e}; restarting it", datad.pid);
                        *datad = match self.restart_datad(keyd, &spawner).await {
                            Ok(d) => d,
                            // The data plane may have died because keyd did: say so.
                            Err(MonitorError::Ipc("keyd", e)) => {
                                return Err(keyd_died(Some(e), keyd, keyd_child).await);
                            }
                            Err(MonitorError::Ipc("spawner", e)) => {
                                return Err(spawner_gone(Some(e), &spawner, spawner_child).await);
                            }
                            Err(e) => return Err(e),
                        };
                    }
                },
                m = spawner.recv::<SpawnerToMonitor>() => match m {
                    Ok(Received { msg: SpawnerToMonitor::Exited { pid, status }, .. }) => {
                        tracing::warn!("data plane pid {pid} {status}");
                    }
                    Ok(_) => {}
                    Err(e) => return Err(spawner_gone(Some(e), &spawner, spawner_child).await),
                },
                _ = poll.tick() => {
                    if device::is_deleted(&self.tun) {
                        return Ok(Stopped::InterfaceGone);
                    }
                    if self.socket_file.as_ref().is_some_and(SocketFile::is_gone) {
                        return Ok(Stopped::SocketGone);
                    }
                    if let Some(mtu) = self.mtu.on_poll(device::mtu(&self.tun)) {
                        tracing::info!("the MTU of {} is now {mtu}", self.interface);
                        send_mtu(datad, mtu).await;
                    }
                }
                () = signals.recv() => return Ok(Stopped::Signal),
            }
        }
    }

    /// Has the spawner start a data plane and gives it its descriptors.
    async fn start_datad(
        &mut self,
        spawner: &Channel,
        keyd_link: OwnedFd,
    ) -> Result<DataPlane, MonitorError> {
        let (ours, theirs) = channel_pair()?;
        spawner
            .send(&MonitorToSpawner::SpawnDatad, &[theirs.as_fd()])
            .await
            .map_err(|e| MonitorError::Ipc("spawner", e))?;
        drop(theirs);
        let pid = loop {
            let reply = spawner
                .recv::<SpawnerToMonitor>()
                .await
                .map_err(|e| MonitorError::Ipc("spawner", e))?;
            match reply.msg {
                SpawnerToMonitor::Spawned { pid } => break pid,
                SpawnerToMonitor::SpawnFailed { reason } => {
                    return Err(MonitorError::SpawnFailed(reason));
                }
                SpawnerToMonitor::Exited { pid, status } => {
                    tracing::warn!("data plane pid {pid} {status}");
                }
                SpawnerToMonitor::Hello(h) => h
                    .check(Role::Spawner)
                    .map_err(|e| MonitorError::Ipc("spawner", e.into()))?,
            }
        };
        let channel = Channel::from_fd(ours)?;
        channel
            .send(&MonitorToDatad::Hello(Hello::new(Role::Monitor)), &[])
            .await
            .map_err(|e| MonitorError::Ipc("datad", e))?;
        let s = &self.sockets.sockets;
        let mut fds = vec![self.tun.as_fd(), s.v4.as_fd()];
        if let Some(v6) = &s.v6 {
            fds.push(v6.as_fd());
        }
        fds.push(keyd_link.as_fd());
        channel
            .send(
                &MonitorToDatad::Start {
                    listen_port: s.port,
                    has_ipv6: s.v6.is_some(),
                    udp_gso: s.offload.gso,
                    crypto_threads: self.crypto_threads,
                },
                &fds,
            )
            .await
            .map_err(|e| MonitorError::Ipc("datad", e))?;
        tracing::info!("data plane started (pid {pid})");
        let datad = DataPlane { channel, pid };
        // Every data plane, restarted ones too, starts from the MTU the device was created
        // with: tell it the current one.
        if let Some(mtu) = self.mtu.on_start(device::mtu(&self.tun)) {
            send_mtu(&datad, mtu).await;
        }
        Ok(datad)
    }

    async fn restart_datad(
        &mut self,
        keyd: &Channel,
        spawner: &Channel,
    ) -> Result<DataPlane, MonitorError> {
        let now = Instant::now();
        self.restarts
            .retain(|t| now.saturating_duration_since(*t) < RESTART_WINDOW);
        if self.restarts.len() >= MAX_RESTARTS {
            return Err(MonitorError::CrashLoop);
        }
        self.restarts.push(now);
        let (keyd_end, datad_end) = channel_pair()?;
        let datad = self.start_datad(spawner, datad_end).await?;
        keyd.send(&MonitorToKeyd::DataPlaneRestarted, &[keyd_end.as_fd()])
            .await
            .map_err(|e| MonitorError::Ipc("keyd", e))?;
        self.datad_generation = self.datad_generation.wrapping_add(1);
        Ok(datad)
    }

    /// The privileged request table: a Hello, or a reconfiguration of the sockets.
    async fn on_keyd(
        &mut self,
        msg: KeydToMonitor,
        keyd: &Channel,
        datad: &DataPlane,
        spawner: &Channel,
    ) -> Result<(), MonitorError> {
        let reply = match msg {
            KeydToMonitor::Hello(hello) => {
                return hello
                    .check(Role::Keyd)
                    .map_err(|e| MonitorError::Ipc("keyd", e.into()));
            }
            KeydToMonitor::RestartDataPlane { reason, generation } => {
                if generation != self.datad_generation {
                    tracing::info!(
                        "the key process gave up on a data plane that was already replaced ({reason})"
                    );
                    return Ok(());
                }
                tracing::warn!(
                    "the key process gave up on the data plane (pid {}): {reason}; replacing it",
                    datad.pid
                );
                // Its channel closes when it dies; the restart follows from there.
                return kill_datad(spawner, datad.pid).await;
            }
            KeydToMonitor::Reconfigure { port, fwmark } => {
                self.reconfigure(port, fwmark, datad).await
            }
        };
        keyd.send(&reply, &[])
            .await
            .map_err(|e| MonitorError::Ipc("keyd", e))
    }

    /// Applies keyd's `Reconfigure` ([`sockets::SocketOwner::handle_reconfigure`], shared
    /// with `wg-embed`) and sends what it decided to the data plane; returns keyd's answer.
    async fn reconfigure(&mut self, port: u16, fwmark: u32, datad: &DataPlane) -> MonitorToKeyd {
        let outcome = self.sockets.handle_reconfigure(port, fwmark);
        if let Some((msg, fds)) = &outcome.announce
            && let Err(e) = datad.channel.send(msg, fds).await
        {
            // A lost data plane is restarted with the new sockets.
            tracing::warn!("could not hand new sockets to the data plane: {e}");
        }
        outcome.reply
    }
}
