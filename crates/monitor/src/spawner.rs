//! The spawner: the one process that may start programs after start-up. It runs as the
//! unprivileged user with no capabilities, so every data plane it starts (the first one
//! and every restart) is unprivileged from birth, while the monitor itself never execs.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use tokio::process::Child;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use wg_ipc::messages::{Hello, MonitorToSpawner, Role, SpawnerToMonitor};
use wg_ipc::worker::INTERFACE_ENV;
use wg_ipc::{Channel, IPC_FD_ENV, make_inheritable};

use crate::{DATAD_BINARY, MonitorError, describe};

/// Starts `binary` with `ipc` as its channel (inherited, named in `WG_RS_IPC_FD`), and
/// `interface` (for its log lines) in [`INTERFACE_ENV`] (`None`: as inherited). What is
/// only the monitor's business is not passed on: the inherited TUN and UAPI descriptors'
/// variables, the readiness pipe's, and systemd's notification socket.
pub(crate) fn spawn_with_channel(
    path: &std::path::Path,
    binary: &'static str,
    args: &[String],
    ipc: OwnedFd,
    interface: Option<&str>,
) -> Result<Child, MonitorError> {
    make_inheritable(&ipc)?;
    let mut command = tokio::process::Command::new(path);
    // In the sandboxed spawner: the data plane starts not dumpable and not traceable.
    #[cfg(target_os = "linux")]
    wg_sandbox::exec_with_transient_group(command.as_std_mut());
    if let Some(interface) = interface {
        command.env(INTERFACE_ENV, interface);
    }
    // So the worker can tell we died before it armed its parent-death signal.
    command.env(wg_sandbox::PARENT_PID_ENV, std::process::id().to_string());
    let child = command
        .args(args)
        .env(
            IPC_FD_ENV,
            std::os::fd::AsRawFd::as_raw_fd(&ipc).to_string(),
        )
        .env_remove("WG_TUN_FD")
        .env_remove("WG_UAPI_FD")
        .env_remove(crate::notify::READY_FD_ENV)
        .env_remove(crate::notify::NOTIFY_SOCKET_ENV)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| MonitorError::Spawn {
            binary,
            path: path.display().to_string(),
            source,
        })?;
    drop(ipc);
    Ok(child)
}

/// Serves the monitor's spawn requests until it closes the channel.
pub async fn run(
    channel: Channel,
    worker_dir: PathBuf,
    worker_args: Vec<String>,
) -> Result<(), MonitorError> {
    channel
        .send(&SpawnerToMonitor::Hello(Hello::new(Role::Spawner)), &[])
        .await
        .map_err(|e| MonitorError::Ipc("monitor", e))?;
    let path = worker_dir.join(DATAD_BINARY);
    let mut children: JoinSet<(u32, String)> = JoinSet::new();
    // One kill switch per data plane not yet reaped: its pid cannot have been reused.
    let mut kill_switches: HashMap<u32, oneshot::Sender<()>> = HashMap::new();
    loop {
        tokio::select! {
            m = channel.recv::<MonitorToSpawner>() => {
                let m = match m {
                    Ok(m) => m,
                    // The monitor is gone: dropping the children kills them.
                    Err(_) => return Ok(()),
                };
                match m.msg {
                    MonitorToSpawner::Hello(h) => h.check(Role::Monitor).map_err(|e| MonitorError::Ipc("monitor", e.into()))?,
                    MonitorToSpawner::SpawnDatad => {
                        let Some(fd) = m.fds.into_iter().next() else {
                            return Err(MonitorError::Ipc("monitor", wg_ipc::IpcError::BadFds));
                        };
                        let reply = match spawn_with_channel(&path, DATAD_BINARY, &worker_args, fd, None) {
                            Ok(mut child) => {
                                let pid = child.id().unwrap_or(0);
                                let (kill_tx, kill_rx) = oneshot::channel();
                                kill_switches.insert(pid, kill_tx);
                                children.spawn(async move {
                                    tokio::select! {
                                        status = child.wait() => (pid, describe(status)),
                                        Ok(()) = kill_rx => {
                                            let _ = child.start_kill();
                                            (pid, describe(child.wait().await))
                                        }
                                    }
                                });
                                SpawnerToMonitor::Spawned { pid }
                            }
                            Err(e) => SpawnerToMonitor::SpawnFailed { reason: e.to_string() },
                        };
                        channel.send(&reply, &[]).await.map_err(|e| MonitorError::Ipc("monitor", e))?;
                    }
                    MonitorToSpawner::KillDatad { pid } => match kill_switches.remove(&pid) {
                        Some(kill) => {
                            tracing::warn!("killing data plane pid {pid} at the monitor's request");
                            let _ = kill.send(());
                        }
                        None => tracing::debug!("data plane pid {pid} already ended"),
                    },
                }
            }
            Some(Ok((pid, status))) = children.join_next() => {
                kill_switches.remove(&pid);
                channel
                    .send(&SpawnerToMonitor::Exited { pid, status }, &[])
                    .await
                    .map_err(|e| MonitorError::Ipc("monitor", e))?;
            }
        }
    }
}
