//! The key process's event loop: UAPI clients, the data plane and the monitor, all feeding
//! one owner of the configuration and the handshake state (no locks, no shared state).

use std::collections::{HashMap, VecDeque};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use wg_ipc::messages::{
    DatadToKeyd, Hello, KeydToDatad, KeydToMonitor, Misbehaviour, MonitorToKeyd, Role,
};
use wg_ipc::{Channel, IpcError, Received};
use wg_uapi::{Applied, DeviceConfig, Errno, ParseOptions, Request, Response};

use crate::KeydError;
use crate::config;
use crate::handshakes::Handshakes;
use crate::link::{DatadLink, StatsAnswer};
use crate::pool;

/// A UAPI client waiting this long for its next request is disconnected.
const UAPI_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests queued from all UAPI clients.
const COMMAND_QUEUE: usize = 64;

/// One UAPI request and where to send its answer: what a UAPI client's connection hands
/// the event loop, and what an in-process owner of keyd ([`UapiSource::InProcess`]) sends
/// it directly.
#[derive(Debug)]
pub struct UapiRequest {
    /// The parsed request.
    pub request: Request,
    /// Where the answer goes (`get` text with its `errno=0` trailer, `SetOk` or the
    /// error).
    pub reply: oneshot::Sender<Response>,
}

type Command = UapiRequest;

/// Where keyd's UAPI requests come from.
#[derive(Debug)]
pub enum UapiSource {
    /// The UAPI socket (`/var/run/wireguard/IFNAME.sock`), non-blocking and registered
    /// with the runtime ([`UapiSource::socket`]): clients are accepted when they run as
    /// root or as the monitor's user.
    Socket(UnixListener),
    /// Requests from the same process (the in-process tunnel): no socket and no owner
    /// check, the sender is the owner of the tunnel. Serving ends when every sender is
    /// dropped, as when the monitor goes away.
    InProcess(mpsc::Receiver<UapiRequest>),
}

impl UapiSource {
    /// The UAPI socket `listener`, made non-blocking and registered with the runtime.
    /// Called before the sandbox: FreeBSD's capability mode leaves the listener no
    /// `ioctl` to make it non-blocking afterwards. Needs a tokio runtime.
    pub fn socket(listener: StdUnixListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(UapiSource::Socket(UnixListener::from_std(listener)?))
    }
}

/// What keyd starts with.
#[derive(Debug)]
pub struct KeydStartup {
    /// The interface name.
    pub interface: String,
    /// The UAPI requests: the listener (`/var/run/wireguard/IFNAME.sock`) or an in-process
    /// receiver.
    pub uapi: UapiSource,
    /// Channel to the data plane.
    pub datad: Channel,
    /// Channel to the monitor (privileged operations).
    pub monitor: Channel,
    /// The port the monitor bound at start-up.
    pub listen_port: u16,
}

struct Keyd {
    config: DeviceConfig,
    handshakes: Handshakes,
    /// The oracle's randomness (ephemeral keys, receiver indices), seeded from the OS once
    /// at start.
    rng: StdRng,
    /// The data plane's channel and keyd's bookkeeping of it; `None` between giving up on
    /// one (or losing it) and the monitor's restart.
    datad: Option<(Channel, DatadLink)>,
    monitor: Channel,
    /// Which data plane `datad` is (or was): counts the monitor's restarts.
    datad_generation: u32,
    /// Handshake requests dropped by the limits since the last log line, and when that was.
    dropped_work: u64,
    dropped_logged_at: Option<Instant>,
    /// `get` requests waiting for the statistics request in flight.
    stats_waiters: Vec<oneshot::Sender<Response>>,
    /// A `set` waiting for the monitor to rebind or re-mark the sockets.
    pending_set: Option<(Applied, oneshot::Sender<Response>)>,
    /// Commands that arrived while a `set` was pending; served in order afterwards.
    queued: VecDeque<Command>,
}

async fn recv_datad(datad: Option<&Channel>) -> Result<Received<DatadToKeyd>, IpcError> {
    match datad {
        Some(d) => d.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the data plane can take more, if messages wait for it.
async fn datad_writable(datad: Option<&(Channel, DatadLink)>) -> Result<(), IpcError> {
    match datad {
        Some((channel, link)) if link.has_backlog() => channel.writable().await,
        _ => std::future::pending().await,
    }
}

/// CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`): what keyd charges for the
/// data plane's requests, unaffected by time spent waiting for a core.
fn thread_cpu_time() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, |t| {
        Duration::new(
            u64::try_from(t.tv_sec()).unwrap_or(0),
            u32::try_from(t.tv_nsec()).unwrap_or(0),
        )
    })
}

/// The UAPI answer to a listen port or mark the monitor could not apply: a refused
/// privilege says so (`wg` prints "Permission denied"), anything else is wireguard-go's
/// "address in use".
fn reconfigure_errno(errno: i32) -> Errno {
    if errno == nix::errno::Errno::EACCES as i32 || errno == nix::errno::Errno::EPERM as i32 {
        Errno::PermissionDenied
    } else {
        Errno::PortInUse
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Serves until the monitor goes away (the process is then stopped anyway).
pub async fn serve(startup: KeydStartup) -> Result<(), KeydError> {
    let (listener, commands_tx, mut commands) = match startup.uapi {
        UapiSource::Socket(listener) => {
            let (tx, rx) = mpsc::channel::<Command>(COMMAND_QUEUE);
            (Some(listener), Some(tx), rx)
        }
        UapiSource::InProcess(rx) => (None, None, rx),
    };
    let mut keyd = Keyd {
        config: DeviceConfig {
            listen_port: startup.listen_port,
            ..DeviceConfig::default()
        },
        handshakes: Handshakes::new(),
        rng: rand::make_rng(),
        datad: None,
        monitor: startup.monitor,
        datad_generation: 0,
        dropped_work: 0,
        dropped_logged_at: None,
        stats_waiters: Vec::new(),
        pending_set: None,
        queued: VecDeque::new(),
    };
    // UAPI clients must run as root or as whoever started the daemon (the monitor's
    // user), never as keyd's own unprivileged uid.
    let owner = keyd.monitor.peer_uid()?;
    keyd.attach_datad(startup.datad).await?;
    tracing::info!("key process serving interface {}", startup.interface);
    let mut accept_paused_until: Option<Instant> = None;
    loop {
        let deadline = keyd.datad.as_ref().and_then(|(_, l)| l.next_deadline());
        tokio::select! {
            // The monitor and UAPI first: however much a data plane sends, the
            // administrator is served (and the data plane's messages wait in its socket).
            biased;
            m = keyd.monitor.recv::<MonitorToKeyd>() => match m {
                Ok(m) => keyd.on_monitor(m).await?,
                // The monitor closes its end when the daemon stops: a normal end.
                Err(IpcError::Closed) => return Ok(()),
                Err(e) => return Err(KeydError::Monitor(e)),
            },
            command = commands.recv() => match command {
                Some(command) => keyd.on_command(command).await?,
                // Only an in-process source closes (the socket's sender lives here): its
                // owner is gone, as the monitor would be.
                None => return Ok(()),
            },
            accepted = accept(listener.as_ref(), accept_paused_until) => match accepted {
                Ok((stream, _)) => {
                    accept_paused_until = None;
                    if let Some(tx) = &commands_tx {
                        spawn_client(stream, owner, tx.clone());
                    }
                }
                // Out of descriptors (EMFILE: the sandbox's limit is small) or another
                // failure the listener stays readable through: pause accepting for a
                // moment rather than spin (the clients wait in the backlog).
                Err(e) => {
                    tracing::warn!("UAPI accept failed: {e}; pausing accepts for {ACCEPT_PAUSE:?}");
                    accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                }
            },
            () = sleep_until(deadline) => {
                let late = keyd.datad.as_ref().map(|(_, l)| l.check_deadlines(Instant::now()));
                if let Some(Err(reason)) = late {
                    keyd.give_up_on_datad(reason).await?;
                }
            }
            w = datad_writable(keyd.datad.as_ref()) => {
                if let Err(e) = w {
                    keyd.lost_datad(&e);
                }
            }
            m = recv_datad(keyd.datad.as_ref().map(|(c, _)| c)) => match m {
                Ok(m) => {
                    keyd.on_datad(m.msg).await?;
                    // Reading a socket that stays readable costs no scheduler budget: without
                    // this, a data plane that never stops sending would keep this task
                    // running and starve the UAPI client tasks.
                    tokio::task::consume_budget().await;
                }
                Err(e) => keyd.lost_datad(&e),
            },
            // Last, so only a keyd with nothing else to do gets here: wipe the ready
            // ephemeral keys that went stale, and make one more after a moment of quiet.
            () = sleep_until(keyd.handshakes.next_key_expiry()) => {
                keyd.handshakes.expire_keys(Instant::now());
            }
            () = tokio::time::sleep(pool::REFILL_AFTER_IDLE), if keyd.handshakes.wants_refill() => {
                keyd.handshakes.refill_one(Instant::now(), &mut keyd.rng);
            }
        }
        keyd.flush_datad();
    }
}

/// How long accepting pauses after a failed `accept`.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// The next UAPI client, if there is a socket, not before `paused_until`.
async fn accept(
    listener: Option<&UnixListener>,
    paused_until: Option<Instant>,
) -> std::io::Result<(tokio::net::UnixStream, tokio::net::unix::SocketAddr)> {
    if let Some(at) = paused_until {
        tokio::time::sleep_until(at.into()).await;
    }
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn spawn_client(stream: tokio::net::UnixStream, owner: u32, commands: mpsc::Sender<Command>) {
    tokio::spawn(async move {
        if let Err(e) = wg_uapi::check_peer_owned_by(&stream, owner) {
            tracing::warn!("UAPI client refused: {e}");
            return;
        }
        let options = ParseOptions::default();
        let result = wg_uapi::serve_connection(
            stream,
            options,
            UAPI_IDLE_TIMEOUT,
            // A plain closure returning a `'static` future keeps the task `Send`.
            move |request| {
                let commands = commands.clone();
                async move {
                    let (reply, answer) = oneshot::channel();
                    if commands.send(Command { request, reply }).await.is_err() {
                        return Response::Error(Errno::Unknown);
                    }
                    answer.await.unwrap_or(Response::Error(Errno::Unknown))
                }
            },
        )
        .await;
        if let Err(e) = result {
            tracing::info!("UAPI client: {e}");
        }
    });
}

impl Keyd {
    /// Queues messages for the data plane (sent as it reads, never awaited).
    async fn send_datad(&mut self, messages: Vec<KeydToDatad>) -> Result<(), KeydError> {
        let Some((_, link)) = &mut self.datad else {
            return Ok(());
        };
        if let Err(reason) = link.queue(messages, Instant::now()) {
            self.give_up_on_datad(reason).await?;
        }
        Ok(())
    }

    /// Sends what the data plane's socket takes now.
    fn flush_datad(&mut self) {
        let Some((channel, link)) = &mut self.datad else {
            return;
        };
        while let Some(bytes) = link.front() {
            match channel.try_send_encoded(bytes) {
                Ok(true) => link.sent_front(Instant::now()),
                Ok(false) => return,
                Err(e) => {
                    self.lost_datad(&e);
                    return;
                }
            }
        }
    }

    /// Connects a (new) data plane and gives it the whole configuration.
    async fn attach_datad(&mut self, datad: Channel) -> Result<(), KeydError> {
        self.datad = Some((datad, DatadLink::new()));
        self.handshakes.reset_sessions();
        let mut out = vec![KeydToDatad::Hello(Hello::new(Role::Keyd))];
        out.extend(config::full_configuration(&self.config, &self.handshakes));
        self.send_datad(out).await
    }

    /// Counts handshake work dropped by the limits and logs it at most once a second (a
    /// flood must not become a flood of log lines).
    fn log_dropped_work(&mut self) {
        self.dropped_work += 1;
        let now = Instant::now();
        if self
            .dropped_logged_at
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            tracing::info!(
                "dropped {} handshake requests from the data plane over the rate limit",
                self.dropped_work
            );
            self.dropped_work = 0;
            self.dropped_logged_at = Some(now);
        }
    }

    /// The data plane's channel failed (it died; the monitor restarts it and hands us the
    /// new channel).
    fn lost_datad(&mut self, e: &IpcError) {
        tracing::warn!("lost the data plane ({e}); waiting for the monitor to restart it");
        self.drop_datad();
    }

    /// The data plane broke the rules: close its channel and have the monitor replace it.
    async fn give_up_on_datad(&mut self, reason: Misbehaviour) -> Result<(), KeydError> {
        tracing::warn!("giving up on the data plane: {reason}; asking the monitor to replace it");
        self.drop_datad();
        self.monitor
            .send(
                &KeydToMonitor::RestartDataPlane {
                    reason,
                    generation: self.datad_generation,
                },
                &[],
            )
            .await
            .map_err(KeydError::Monitor)
    }

    fn drop_datad(&mut self) {
        self.datad = None;
        self.answer_stats(&HashMap::new());
    }

    /// Answers every waiting `get` with the configuration and `runtime`.
    fn answer_stats(&mut self, runtime: &StatsAnswer) {
        if self.stats_waiters.is_empty() {
            return;
        }
        let text = wg_uapi::write_get(&self.config, |key| {
            runtime.get(key).cloned().unwrap_or_default()
        });
        for reply in self.stats_waiters.drain(..) {
            let _ = reply.send(Response::Get(text.clone()));
        }
    }

    async fn on_command(&mut self, command: Command) -> Result<(), KeydError> {
        if self.pending_set.is_some() {
            self.queued.push_back(command);
            return Ok(());
        }
        match command.request {
            Request::Get => {
                self.stats_waiters.push(command.reply);
                let peers = self.config.peers.len();
                let asked = match &mut self.datad {
                    Some((_, link)) => link.request_stats(peers, Instant::now()),
                    None => Ok(false),
                };
                match asked {
                    Err(reason) => self.give_up_on_datad(reason).await?,
                    // Without a data plane there are no statistics to wait for.
                    Ok(_) if self.datad.is_none() => self.answer_stats(&HashMap::new()),
                    Ok(_) => {}
                }
            }
            Request::Set(request) => {
                let applied = match config::apply(&self.config, &request) {
                    Ok(applied) => applied,
                    Err(e) => {
                        tracing::info!("UAPI set refused: {e}");
                        let response =
                            Response::for_error(&e).unwrap_or(Response::Error(Errno::Invalid));
                        let _ = command.reply.send(response);
                        return Ok(());
                    }
                };
                if config::needs_sockets(&self.config, &request, &applied) {
                    let ask = KeydToMonitor::Reconfigure {
                        port: applied.config.listen_port,
                        fwmark: applied.config.fwmark,
                    };
                    if let Err(e) = self.monitor.send(&ask, &[]).await {
                        tracing::error!("cannot reach the monitor: {e}");
                        let _ = command.reply.send(Response::Error(Errno::PortInUse));
                        return Ok(());
                    }
                    self.pending_set = Some((applied, command.reply));
                } else {
                    self.commit(applied).await?;
                    let _ = command.reply.send(Response::SetOk);
                }
            }
        }
        Ok(())
    }

    /// Makes a validated configuration current and tells the data plane what changed.
    async fn commit(&mut self, applied: Applied) -> Result<(), KeydError> {
        let out = config::commit(&mut self.config, &mut self.handshakes, applied);
        self.send_datad(out).await
    }

    async fn on_datad(&mut self, msg: DatadToKeyd) -> Result<(), KeydError> {
        let Some((_, link)) = &mut self.datad else {
            return Ok(());
        };
        let cpu_before = thread_cpu_time();
        let result = link.on_message(
            msg,
            &mut self.handshakes,
            Instant::now(),
            SystemTime::now(),
            &mut self.rng,
        );
        link.charge_work(thread_cpu_time().saturating_sub(cpu_before));
        match result {
            Ok(outcome) => {
                if outcome.dropped {
                    self.log_dropped_work();
                }
                if let Some(runtime) = outcome.stats {
                    self.answer_stats(&runtime);
                }
                Ok(())
            }
            Err(reason) => self.give_up_on_datad(reason).await,
        }
    }

    async fn on_monitor(&mut self, m: Received<MonitorToKeyd>) -> Result<(), KeydError> {
        match m.msg {
            MonitorToKeyd::Hello(hello) => hello
                .check(Role::Monitor)
                .map_err(|e| KeydError::Monitor(e.into()))?,
            MonitorToKeyd::Start { .. } => return Err(KeydError::Protocol("second start")),
            MonitorToKeyd::Reconfigured { port, errno } => {
                let Some((mut applied, reply)) = self.pending_set.take() else {
                    return Err(KeydError::Protocol("unrequested reconfiguration"));
                };
                if errno == 0 {
                    applied.config.listen_port = port;
                    self.commit(applied).await?;
                    let _ = reply.send(Response::SetOk);
                } else {
                    tracing::warn!(
                        "cannot apply listen port {} / fwmark {}: errno {errno}; configuration unchanged",
                        applied.config.listen_port,
                        applied.config.fwmark
                    );
                    let _ = reply.send(Response::Error(reconfigure_errno(errno)));
                }
                while self.pending_set.is_none() {
                    let Some(next) = self.queued.pop_front() else {
                        break;
                    };
                    Box::pin(self.on_command(next)).await?;
                }
            }
            MonitorToKeyd::DataPlaneRestarted => {
                let fd = m
                    .fds
                    .into_iter()
                    .next()
                    .ok_or(KeydError::Protocol("restart without a channel"))?;
                tracing::info!("data plane restarted; re-sending the configuration");
                self.datad_generation = self.datad_generation.wrapping_add(1);
                self.attach_datad(Channel::from_fd(fd)?).await?;
            }
        }
        Ok(())
    }
}
