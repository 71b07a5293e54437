//! The launcher and supervisor (`wireguard-rs`): opens what needs privileges, starts the
//! two workers and from then on only watches them and performs the few privileged
//! operations the key process asks for.
//!
//! **Owns:** the TUN device and UDP sockets (it hands duplicates to the data plane and
//! keeps its own to restart it), the UAPI listener until keyd has it, the worker
//! processes, and the table of privileged requests: [`KeydToMonitor::Reconfigure`] (new
//! listen port, firewall mark) and nothing else.
//!
//! **Trusts:** its command line and environment (it runs as the administrator who started
//! it). Worker messages are checked against the table; a worker that breaks protocol is
//! treated as dead. keyd's death is fatal (fail closed); datad's is repaired by a restart.
//!
//! **May depend on:** ipc, tun, uapi (for the listener), socket2, nix, tokio. Never on
//! handshake, router or keyd/datad logic: the launcher binary holds no key code.
#![forbid(unsafe_code)]

pub mod sockets;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use wg_ipc::messages::{
    DatadToMonitor, Hello, KeydToMonitor, MonitorToDatad, MonitorToKeyd, Role,
};
use wg_ipc::{Channel, IPC_FD_ENV, IpcError, make_inheritable, seqpacket_pair};
use wg_tun::Tun;

pub use sockets::UdpSockets;

/// Name of the key process binary.
pub const KEYD_BINARY: &str = "wireguard-rs-keyd";
/// Name of the data-plane binary.
pub const DATAD_BINARY: &str = "wireguard-rs-datad";
/// Packagers may set this at build time to their libexec directory.
pub const BUILD_LIBEXEC_DIR: Option<&str> = option_env!("WIREGUARD_RS_LIBEXEC_DIR");
/// How often the interface's existence is checked.
const INTERFACE_POLL: Duration = Duration::from_secs(1);
/// More data-plane deaths than this within [`RESTART_WINDOW`] is a crash loop: give up.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(30);

/// Why the supervisor stopped.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// A worker binary could not be started.
    #[error("cannot start {binary} ({path}): {source}; install it beside wireguard-rs or pass --libexec-dir")]
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
    /// Directory of the worker binaries.
    pub worker_dir: PathBuf,
    /// Extra arguments for both workers (e.g. `--no-sandbox`, log settings).
    pub worker_args: Vec<String>,
}

struct Worker {
    child: Child,
    channel: Channel,
}

fn spawn(
    dir: &Path,
    binary: &'static str,
    args: &[String],
) -> Result<(Child, Channel), MonitorError> {
    let path = dir.join(binary);
    let (ours, theirs) = seqpacket_pair()?;
    make_inheritable(&theirs)?;
    let child = Command::new(&path)
        .args(args)
        .env(IPC_FD_ENV, std::os::fd::AsRawFd::as_raw_fd(&theirs).to_string())
        .env_remove("WG_TUN_FD")
        .env_remove("WG_UAPI_FD")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| MonitorError::Spawn {
            binary,
            path: path.display().to_string(),
            source,
        })?;
    drop(theirs);
    Ok((child, Channel::from_fd(ours)?))
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
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
    worker_args: Vec<String>,
    restarts: Vec<Instant>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor for prepared descriptors.
    pub fn new(prepared: Prepared) -> Self {
        Self {
            interface: prepared.interface,
            tun: prepared.tun,
            uapi: prepared.uapi,
            sockets: sockets::SocketOwner {
                sockets: prepared.sockets,
                fwmark: 0,
            },
            worker_dir: prepared.worker_dir,
            worker_args: prepared.worker_args,
            restarts: Vec::new(),
        }
    }

    /// Starts the workers and supervises them until the interface goes away, a signal
    /// arrives, or keyd dies. The workers are stopped before this returns.
    pub async fn run(mut self) -> Result<Stopped, MonitorError> {
        let dir = self.worker_dir.clone();
        let args = self.worker_args.clone();
        let (keyd_child, keyd_channel) = spawn(&dir, KEYD_BINARY, &args)?;
        let mut keyd = Worker {
            child: keyd_child,
            channel: keyd_channel,
        };
        keyd.channel
            .send(&MonitorToKeyd::Hello(Hello::new(Role::Monitor)), &[])
            .await
            .map_err(|e| MonitorError::Ipc("keyd", e))?;
        let (keyd_end, datad_end) = seqpacket_pair()?;
        keyd.channel
            .send(
                &MonitorToKeyd::Start {
                    interface: self.interface.clone(),
                    listen_port: self.sockets.sockets.port,
                },
                &[self.uapi.as_fd(), keyd_end.as_fd()],
            )
            .await
            .map_err(|e| MonitorError::Ipc("keyd", e))?;
        drop(keyd_end);
        let mut datad = self.start_datad(datad_end).await?;

        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let mut poll = tokio::time::interval(INTERFACE_POLL);

        let result = loop {
            tokio::select! {
                m = keyd.channel.recv::<KeydToMonitor>() => match m {
                    Ok(m) => if let Err(e) = self.on_keyd(m.msg, &keyd, &datad).await {
                        break Err(e);
                    },
                    Err(e) => {
                        let status = describe(keyd.child.wait().await);
                        tracing::error!("key process channel closed ({e}); it {status}");
                        break Err(MonitorError::KeydDied(status));
                    }
                },
                status = keyd.child.wait() => {
                    break Err(MonitorError::KeydDied(describe(status)));
                }
                m = datad.channel.recv::<DatadToMonitor>() => match m {
                    Ok(Received { msg: DatadToMonitor::InterfaceGone, .. }) => {
                        break Ok(Stopped::InterfaceGone);
                    }
                    Ok(Received { msg: DatadToMonitor::Hello(_), .. }) => {}
                    Err(e) => {
                        let status = describe(datad.child.wait().await);
                        tracing::warn!("data plane channel closed ({e}); it {status}; restarting");
                        match self.restart_datad(&keyd).await {
                            Ok(d) => datad = d,
                            Err(e) => break Err(e),
                        }
                    }
                },
                status = datad.child.wait() => {
                    tracing::warn!("data plane {}; restarting", describe(status));
                    match self.restart_datad(&keyd).await {
                        Ok(d) => datad = d,
                        Err(e) => break Err(e),
                    }
                }
                _ = poll.tick() => {
                    if self.tun.is_deleted() {
                        break Ok(Stopped::InterfaceGone);
                    }
                }
                _ = sigterm.recv() => break Ok(Stopped::Signal),
                _ = sigint.recv() => break Ok(Stopped::Signal),
                _ = sighup.recv() => break Ok(Stopped::Signal),
            }
        };
        stop(&mut datad.child).await;
        stop(&mut keyd.child).await;
        result
    }

    async fn start_datad(&mut self, keyd_link: OwnedFd) -> Result<Worker, MonitorError> {
        let (child, channel) = spawn(&self.worker_dir, DATAD_BINARY, &self.worker_args)?;
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
                },
                &fds,
            )
            .await
            .map_err(|e| MonitorError::Ipc("datad", e))?;
        Ok(Worker { child, channel })
    }

    async fn restart_datad(&mut self, keyd: &Worker) -> Result<Worker, MonitorError> {
        let now = Instant::now();
        self.restarts
            .retain(|t| now.saturating_duration_since(*t) < RESTART_WINDOW);
        if self.restarts.len() >= MAX_RESTARTS {
            return Err(MonitorError::CrashLoop);
        }
        self.restarts.push(now);
        let (keyd_end, datad_end) = seqpacket_pair()?;
        let datad = self.start_datad(datad_end).await?;
        keyd.channel
            .send(&MonitorToKeyd::DataPlaneRestarted, &[keyd_end.as_fd()])
            .await
            .map_err(|e| MonitorError::Ipc("keyd", e))?;
        Ok(datad)
    }

    /// The privileged request table: a Hello, or a reconfiguration of the sockets.
    async fn on_keyd(
        &mut self,
        msg: KeydToMonitor,
        keyd: &Worker,
        datad: &Worker,
    ) -> Result<(), MonitorError> {
        let reply = match msg {
            KeydToMonitor::Hello(hello) => {
                return hello
                    .check(Role::Keyd)
                    .map_err(|e| MonitorError::Ipc("keyd", e));
            }
            KeydToMonitor::Reconfigure { port, fwmark } => {
                self.reconfigure(port, fwmark, datad).await
            }
        };
        keyd.channel
            .send(&reply, &[])
            .await
            .map_err(|e| MonitorError::Ipc("keyd", e))
    }

    async fn reconfigure(&mut self, port: u16, fwmark: u32, datad: &Worker) -> MonitorToKeyd {
        match self.sockets.reconfigure(port, fwmark) {
            Ok(rebound) => {
                if rebound {
                    let (msg, fds) = self.sockets.announcement();
                    if let Err(e) = datad.channel.send(&msg, &fds).await {
                        tracing::warn!("could not hand new sockets to the data plane: {e}");
                    }
                }
                MonitorToKeyd::Reconfigured {
                    port: self.sockets.sockets.port,
                    errno: 0,
                }
            }
            Err(errno) => {
                tracing::warn!(
                    "cannot apply port {port} / fwmark {fwmark}: errno {errno}; keeping port {}",
                    self.sockets.sockets.port
                );
                MonitorToKeyd::Reconfigured {
                    port: self.sockets.sockets.port,
                    errno,
                }
            }
        }
    }
}

use wg_ipc::Received;

/// Asks a worker to stop (SIGTERM), then kills it if it lingers.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(2), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}
