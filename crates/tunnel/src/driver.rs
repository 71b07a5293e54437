//! The tunnel's thread: one current-thread runtime, one task driving the device core and
//! the handshake oracle over the TUN descriptor and the UDP sockets.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::mpsc::SyncSender;
use std::time::{Instant, SystemTime};

use rand::rngs::StdRng;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::UnboundedReceiver;
use wg_device::{Device, DeviceError, Encapsulated, Importance, Received};
use wg_keyd::config;
use wg_keyd::handshakes::Handshakes;
use wg_router::{HEADROOM, TAILROOM};
use wg_uapi::{Applied, DeviceConfig, Errno, PeerRuntime, SetRequest};
use zeroize::Zeroizing;

use crate::sockets::{Sockets, Unbound};
use crate::{Framing, PeerStats, TunnelError};

/// The largest IP packet.
const MAX_PACKET: usize = 65_535;
/// Packets read from one source before the others get a turn.
const BATCH: usize = 64;

/// An answer to a request.
pub(crate) type Reply<T> = SyncSender<Result<T, TunnelError>>;

/// What the [`crate::Tunnel`] handle asks of its thread.
pub(crate) enum Request {
    Set(Box<SetRequest>, Reply<()>),
    Get(Reply<Zeroizing<String>>),
    Stats(Reply<Vec<PeerStats>>),
    Bump(Reply<()>),
    SocketFds(Reply<(Option<RawFd>, Option<RawFd>)>),
    Roaming(bool, Reply<()>),
    Stop,
}

/// Why the loop ended on its own.
#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error("the TUN descriptor was closed")]
    TunClosed,
    #[error("reading the TUN descriptor failed: {0}")]
    Tun(io::Error),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// The UAPI error the daemon answers when the sockets cannot be changed: EACCES for a
/// port the process may not bind, else EADDRINUSE.
pub(crate) fn port_error(e: &io::Error) -> TunnelError {
    let errno = if e.kind() == io::ErrorKind::PermissionDenied {
        Errno::PermissionDenied
    } else {
        Errno::PortInUse
    };
    TunnelError::Uapi {
        errno: errno.code(),
        message: format!("cannot apply the listen port or fwmark: {e}"),
    }
}

/// Runs the tunnel on this thread until it is stopped; `ready` learns whether it started.
/// The tunnel thread's runtime; a failure to build it is reported on `ready`.
pub(crate) fn runtime_or_report(
    ready: &SyncSender<Result<(), TunnelError>>,
) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            let _ = ready.send(Err(TunnelError::Io(e)));
            None
        }
    }
}

pub(crate) fn run(
    tun: OwnedFd,
    framing: Framing,
    settings: SetRequest,
    control: UnboundedReceiver<Request>,
    ready: SyncSender<Result<(), TunnelError>>,
) {
    let Some(runtime) = runtime_or_report(&ready) else {
        return;
    };
    runtime.block_on(async move {
        let mut driver = match Driver::new(tun, framing, &settings) {
            Ok(driver) => driver,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        drop(settings);
        if let Err(e) = driver.pump().await {
            let _ = ready.send(Err(TunnelError::Invalid(e.to_string())));
            return;
        }
        if ready.send(Ok(())).is_err() {
            return;
        }
        match driver.serve(control).await {
            Ok(()) => tracing::info!("tunnel stopped"),
            Err(e) => tracing::error!("tunnel stopped: {e}"),
        }
    });
}

/// Registers the TUN descriptor with the runtime's reactor.
#[allow(unsafe_code)]
fn register(tun: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // `register` needs the descriptor to stay open and refer to the same open file
    // description while registered, and `as_raw_fd` to return it. The `AsyncFd` takes the
    // `OwnedFd`, which keeps the descriptor open until dropped and always returns it; this
    // crate never calls `get_mut`, `try_io_mut`, `async_io_mut`, `ready_mut` or
    // `into_inner`, so nothing can close or replace it while it is registered.
    // SAFETY: the registered descriptor stays open and unreplaced (above).
    let registered = unsafe { AsyncFd::register(tun) };
    registered.map_err(|e| e.into_parts().1)
}

async fn readable(socket: Option<&UdpSocket>) -> io::Result<()> {
    match socket {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

struct Driver {
    tun: AsyncFd<OwnedFd>,
    framing: Framing,
    sockets: Sockets,
    device: Device,
    oracle: Handshakes,
    /// The oracle's randomness (ephemeral keys, receiver indices); the device has its own.
    keyd_rng: StdRng,
    config: DeviceConfig,
    /// A frame read from the TUN descriptor.
    tun_buf: Vec<u8>,
    /// A transport message sealed for sending.
    out_buf: Vec<u8>,
    /// A datagram received, decrypted in place (its plaintext follows `HEADROOM` bytes,
    /// where the frame header is written in front of it).
    udp_buf: Vec<u8>,
}

impl Driver {
    /// Binds the sockets and applies the first configuration. Runs inside the runtime.
    fn new(tun: OwnedFd, framing: Framing, settings: &SetRequest) -> Result<Self, TunnelError> {
        let applied =
            config::apply(&DeviceConfig::default(), settings).map_err(|e| crate::uapi_error(&e))?;
        let sockets = Unbound::new(applied.config.fwmark)
            .and_then(|s| s.bind(applied.config.listen_port))
            .map_err(|e| port_error(&e))?;
        let mut driver = Self {
            tun: register(tun)?,
            framing,
            sockets,
            device: Device::new(rand::make_rng()),
            oracle: Handshakes::new(),
            keyd_rng: rand::make_rng(),
            config: DeviceConfig::default(),
            tun_buf: vec![0; MAX_PACKET + framing.header_len()],
            out_buf: vec![0; HEADROOM + MAX_PACKET + TAILROOM],
            udp_buf: vec![0; MAX_PACKET],
        };
        driver
            .commit(applied)
            .map_err(|e| TunnelError::Invalid(e.to_string()))?;
        Ok(driver)
    }

    async fn serve(&mut self, mut control: UnboundedReceiver<Request>) -> Result<(), Fatal> {
        loop {
            let deadline = self.device.poll_timeout(Instant::now());
            tokio::select! {
                request = control.recv() => match request {
                    // Every handle is gone, or asked to stop.
                    None | Some(Request::Stop) => return Ok(()),
                    Some(request) => self.on_request(request).await?,
                },
                // Not just READABLE: a deleted Linux TUN interface polls as EPOLLERR only.
                r = async {
                    self.tun.ready(Interest::READABLE | Interest::ERROR).await.map(|g| g.ready())
                } => match r {
                    Ok(ready) if ready.is_error() && !ready.is_readable() => {
                        return Err(self.tun_error());
                    }
                    Ok(_) => self.on_tun().await?,
                    Err(e) => return Err(Fatal::Tun(e)),
                },
                r = readable(self.sockets.v4.as_ref()) => self.on_udp(r, false).await?,
                r = readable(self.sockets.v6.as_ref()) => self.on_udp(r, true).await?,
                () = sleep_until(deadline) => {
                    self.device.handle_timeout(Instant::now());
                    self.pump().await?;
                }
            }
        }
    }

    // ----- configuration -----

    /// Makes `applied` current (its sockets are already in place) and tells the device.
    fn commit(&mut self, mut applied: Applied) -> Result<(), DeviceError> {
        applied.config.listen_port = self.sockets.port;
        let messages = config::commit(&mut self.config, &mut self.oracle, applied);
        let (now, wall) = (Instant::now(), SystemTime::now());
        for msg in messages {
            self.device.handle_keyd(msg, now, wall)?;
        }
        Ok(())
    }

    /// A UAPI `set`, as the daemon applies it: validated whole, then the sockets, then
    /// the configuration.
    fn set(&mut self, request: &SetRequest) -> Result<Result<(), TunnelError>, Fatal> {
        let applied = match config::apply(&self.config, request) {
            Ok(applied) => applied,
            Err(e) => {
                tracing::info!("set refused: {e}");
                return Ok(Err(crate::uapi_error(&e)));
            }
        };
        if config::needs_sockets(&self.config, request, &applied) {
            let fwmark = applied.config.fwmark;
            let new_port = request.listen_port.is_some()
                && applied.config.listen_port != self.config.listen_port;
            let changed = if new_port {
                Unbound::new(fwmark)
                    .and_then(|s| s.bind(applied.config.listen_port))
                    .map(|sockets| self.sockets = sockets)
            } else {
                self.sockets.set_mark(fwmark)
            };
            if let Err(e) = changed {
                tracing::warn!(
                    "cannot apply listen port {} / fwmark {fwmark}: {e}; configuration unchanged",
                    applied.config.listen_port
                );
                return Ok(Err(port_error(&e)));
            }
        }
        self.commit(applied)?;
        Ok(Ok(()))
    }

    /// New sockets on the same port if it is still free, else on a random one.
    fn bump(&mut self) -> Result<(), TunnelError> {
        let fwmark = self.config.fwmark;
        // Created before the old ones close: the new descriptors have other numbers.
        let fresh = Unbound::new(fwmark)?;
        let port = self.sockets.port;
        self.sockets = Sockets {
            v4: None,
            v6: None,
            port,
        };
        let sockets = match fresh.bind(port) {
            Ok(sockets) => sockets,
            Err(e) => {
                tracing::warn!("cannot bind port {port} again ({e}); taking a random one");
                Unbound::new(fwmark)?.bind(0)?
            }
        };
        self.sockets = sockets;
        self.config.listen_port = self.sockets.port;
        Ok(())
    }

    /// What the device knows about a peer now.
    fn runtime(&self, public_key: &wg_wire::PublicKey) -> PeerRuntime {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let Some(stats) = self
            .device
            .peer_id(public_key)
            .and_then(|peer| self.device.router().stats(peer))
        else {
            return PeerRuntime::default();
        };
        PeerRuntime {
            endpoint: stats.endpoint,
            last_handshake: stats
                .last_handshake
                .and_then(|at| wall.checked_sub(now.saturating_duration_since(at))),
            rx_bytes: stats.rx_bytes,
            tx_bytes: stats.tx_bytes,
        }
    }

    fn get(&self) -> Zeroizing<String> {
        let mut text = wg_uapi::write_get(&self.config, |key| self.runtime(key));
        // wireguard-go's IpcGet: the key=value lines only. Truncating keeps the buffer.
        let end = text.len().saturating_sub(crate::GET_TRAILER.len());
        if text.get(end..) == Some(crate::GET_TRAILER) {
            text.truncate(end);
        }
        text
    }

    fn peer_stats(&self) -> Vec<PeerStats> {
        self.config
            .peers
            .iter()
            .map(|peer| {
                let runtime = self.runtime(&peer.public_key);
                PeerStats {
                    public_key: peer.public_key,
                    endpoint: runtime.endpoint.or(peer.endpoint),
                    last_handshake: runtime.last_handshake,
                    rx_bytes: runtime.rx_bytes,
                    tx_bytes: runtime.tx_bytes,
                }
            })
            .collect()
    }

    async fn on_request(&mut self, request: Request) -> Result<(), Fatal> {
        match request {
            Request::Set(settings, reply) => {
                let result = self.set(&settings)?;
                drop(settings);
                let _ = reply.send(result);
                self.pump().await?;
            }
            Request::Get(reply) => {
                let _ = reply.send(Ok(self.get()));
            }
            Request::Stats(reply) => {
                let _ = reply.send(Ok(self.peer_stats()));
            }
            Request::Bump(reply) => {
                let _ = reply.send(self.bump());
            }
            Request::SocketFds(reply) => {
                let _ = reply.send(Ok(self.sockets.raw_fds()));
            }
            Request::Roaming(enabled, reply) => {
                self.device.set_roaming(enabled);
                let _ = reply.send(Ok(()));
            }
            Request::Stop => {}
        }
        Ok(())
    }

    // ----- packets -----

    /// The TUN descriptor reported an error: the read says which.
    fn tun_error(&mut self) -> Fatal {
        match nix::unistd::read(self.tun.get_ref(), &mut self.tun_buf) {
            Ok(0) => Fatal::TunClosed,
            Err(e) if e != nix::errno::Errno::EAGAIN => Fatal::Tun(e.into()),
            _ => Fatal::Tun(io::Error::other("the TUN descriptor reports an error")),
        }
    }

    /// Reads packets from the TUN descriptor, seals and sends them.
    async fn on_tun(&mut self) -> Result<(), Fatal> {
        for _ in 0..BATCH {
            let buf = &mut self.tun_buf;
            let read = self.tun.try_io(Interest::READABLE, |fd| {
                nix::unistd::read(fd, buf).map_err(io::Error::from)
            });
            let n = match read {
                Ok(0) => return Err(Fatal::TunClosed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fatal::Tun(e)),
            };
            let frame = self.tun_buf.get(..n).unwrap_or_default();
            let packet = match self.framing.decode(frame) {
                Ok(packet) => packet,
                Err(e) => {
                    tracing::debug!("TUN frame dropped: {e}");
                    continue;
                }
            };
            let now = Instant::now();
            match self.device.encapsulate(packet, &mut self.out_buf, now) {
                Encapsulated::Send { endpoint, len, .. } => {
                    let message = self.out_buf.get(..len).unwrap_or_default();
                    send(&self.sockets, message, endpoint).await;
                }
                Encapsulated::Staged { .. } => {}
                Encapsulated::Dropped(reason) => tracing::trace!("packet dropped: {reason}"),
            }
            self.pump().await?;
        }
        Ok(())
    }

    /// Receives datagrams from one socket and hands them to the device.
    async fn on_udp(&mut self, readable: io::Result<()>, v6: bool) -> Result<(), Fatal> {
        if let Err(e) = readable {
            tracing::warn!("UDP socket failed: {e}");
            return Ok(());
        }
        for _ in 0..BATCH {
            let socket = if v6 {
                self.sockets.v6.as_ref()
            } else {
                self.sockets.v4.as_ref()
            };
            let Some(socket) = socket else {
                return Ok(());
            };
            let (n, source) = match socket.try_recv_from(&mut self.udp_buf) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // ICMP errors of earlier sends (ECONNREFUSED) and the like: not fatal.
                Err(e) => {
                    tracing::debug!("UDP receive: {e}");
                    continue;
                }
            };
            let now = Instant::now();
            let Some(datagram) = self.udp_buf.get_mut(..n) else {
                continue;
            };
            match self.device.handle_datagram(datagram, source, now) {
                Ok(Received::Data { len, .. }) => self.write_tun(len).await,
                Ok(_) => {}
                Err(discard) => tracing::trace!("datagram from {source} dropped: {discard}"),
            }
            self.pump().await?;
        }
        Ok(())
    }

    /// Writes the plaintext of `len` bytes at `udp_buf[HEADROOM..]` to the TUN descriptor,
    /// its frame header (if any) in front of it.
    async fn write_tun(&mut self, len: usize) {
        let header_len = self.framing.header_len();
        let start = HEADROOM - header_len;
        let Some(packet) = self.udp_buf.get(HEADROOM..HEADROOM + len) else {
            return;
        };
        let Some(header) = self.framing.header(packet) else {
            return;
        };
        if let Some(room) = self.udp_buf.get_mut(start..HEADROOM) {
            room.copy_from_slice(header.get(..header_len).unwrap_or_default());
        }
        let Some(frame) = self.udp_buf.get(start..HEADROOM + len) else {
            return;
        };
        let written = self
            .tun
            .async_io(Interest::WRITABLE, |fd| {
                nix::unistd::write(fd, frame).map_err(io::Error::from)
            })
            .await;
        if let Err(e) = written {
            tracing::debug!("TUN write failed: {e}");
        }
    }

    /// Hands the device's messages to the oracle and its answers back until both are
    /// quiet, then sends the device's datagrams and logs its events.
    async fn pump(&mut self) -> Result<(), Fatal> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        while let Some(msg) = self.device.poll_keyd() {
            let handshake = msg.is_handshake();
            let mut answers = Vec::new();
            if let Err(refusal) =
                self.oracle
                    .on_datad(msg, now, wall, &mut self.keyd_rng, &mut answers)
            {
                tracing::debug!("handshake: {refusal}");
            }
            if handshake {
                // Taken at once: in one thread, the queue never grows.
                self.device.handshakes_taken(1)?;
            }
            for answer in answers {
                self.device.handle_keyd(answer, now, wall)?;
            }
        }
        while let Some(transmit) = self.device.poll_transmit() {
            if send(&self.sockets, &transmit.bytes, transmit.destination).await {
                self.device.transmitted(transmit.peer, transmit.bytes.len());
            }
        }
        while let Some(event) = self.device.poll_event() {
            match event.importance() {
                Importance::Routine => tracing::debug!("{event}"),
                Importance::Story => tracing::info!("{event}"),
                Importance::Problem => tracing::warn!("{event}"),
            }
        }
        Ok(())
    }
}

/// Sends one datagram; whether it went out. Waits while the socket's buffer is full.
async fn send(sockets: &Sockets, bytes: &[u8], destination: SocketAddr) -> bool {
    let Some(socket) = sockets.for_destination(&destination) else {
        tracing::debug!("no socket for {destination}");
        return false;
    };
    match socket.send_to(bytes, destination).await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!("send to {destination}: {e}");
            false
        }
    }
}
