//! The in-process mode: the key process, the data plane and the supervisor's privileged
//! operations as tasks of one process, joined by in-memory channels that carry the very
//! same IPC messages (each one encoded and decoded, as between processes).
//!
//! **For:** tests, and applications that embed WireGuard (a mobile app's network
//! extension) where spawning processes is impossible: [`run`] serves a UAPI socket like the
//! daemon; [`serve`] takes an [`Embedding`] (UAPI requests from the same process and a
//! [`Control`] channel for socket rebinding, descriptors and roaming), which is how
//! `wg-tunnel` runs the daemon's batched data plane behind its API on Linux and Android. It gives up the privilege
//! separation: everything shares one address space. Use the `wireguard-rs` launcher
//! wherever processes are available.
//!
//! **Owns:** the wiring only: keyd's requests are decided by the monitor's own code
//! ([`wg_monitor::sockets::SocketOwner::handle_reconfigure`]); this crate only sends what
//! it decided, and the TUN's MTU is watched as the monitor watches it
//! ([`wg_monitor::mtu::MtuWatch`]: told to the data plane at its start and on every change,
//! read every second). Where it differs from the monitor on purpose (no data-plane
//! restart, no second look at the device) a comment says why. **Trusts:** its caller for
//! the descriptors. **May depend on:** keyd, datad, monitor (sockets, mtu), ipc, tun,
//! tokio.
//!
//! **Linux only:** it runs the Linux daemon's processes (keyd's service, datad, the
//! monitor) as tasks. On every other OS this crate compiles to an empty library (see the
//! platform table in the README).
#![cfg(target_os = "linux")]
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use wg_ipc::messages::{DatadToMonitor, KeydToMonitor, MonitorToDatad, Role};
use wg_ipc::{Channel, Received};
use wg_keyd::UapiSource;
use wg_monitor::mtu::MtuWatch;
use wg_monitor::sockets::{SocketOwner, UdpSockets};
use wg_tun::Tun;

/// Why the in-process daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The key part failed: everything stops (fail closed).
    #[error("key process task failed: {0}")]
    Keyd(String),
    /// The data plane failed.
    #[error("data plane task failed: {0}")]
    Datad(String),
    /// Duplicating a descriptor failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How it ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The TUN interface was deleted.
    InterfaceGone,
    /// The owner dropped its [`Control`] sender ([`Embedding::control`]).
    Requested,
}

/// What an in-process owner asks besides UAPI requests (those go to keyd through
/// [`UapiSource::InProcess`]).
#[derive(Debug)]
pub enum Control {
    /// New UDP sockets (after a network change), on the same port if it can be bound
    /// again, else on a random one. Answers `Some(port)` when the port moved: keyd still
    /// has the old one until the owner sends it a `set` of `listen_port=port` (which then
    /// changes nothing but keyd's view).
    Bump(oneshot::Sender<io::Result<Option<u16>>>),
    /// The raw descriptors of the IPv4 and IPv6 sockets (duplicates of the data plane's:
    /// the same sockets, for `VpnService.protect()`); valid until the next change.
    SocketFds(oneshot::Sender<(Option<RawFd>, Option<RawFd>)>),
    /// Roaming on or off (`MonitorToDatad::Roaming`); answered once it is queued for the
    /// data plane.
    Roaming(bool, oneshot::Sender<()>),
}

/// Everything [`serve`] runs on.
#[derive(Debug)]
pub struct Embedding {
    /// The interface name, for keyd's log.
    pub interface: String,
    /// The TUN device (with or without the virtio-net header: the data plane uses what it
    /// has).
    pub tun: Tun,
    /// Where keyd's UAPI requests come from.
    pub uapi: UapiSource,
    /// The bound UDP sockets (`wg_monitor::sockets::bind`), without a firewall mark.
    pub sockets: UdpSockets,
    /// Threads besides the event loop for the data plane's AEAD work.
    pub crypto_threads: usize,
    /// The owner's requests; dropping the sender stops everything
    /// ([`Stopped::Requested`]). `None`: runs until the interface goes or a part fails.
    pub control: Option<mpsc::UnboundedReceiver<Control>>,
}

/// How often the TUN's MTU is read (as the monitor's poll).
const MTU_POLL: Duration = Duration::from_secs(1);
/// How long a bump waits for the data plane to let go of the old sockets, so the port can
/// be bound again.
const REBIND_WAIT: Duration = Duration::from_millis(500);
const REBIND_RETRY: Duration = Duration::from_millis(2);

/// Tells the data plane the TUN's MTU. A failure means its channel is gone: its task ends
/// and the loop stops with its result.
async fn send_mtu(datad: &Channel, mtu: u32) {
    if let Err(e) = datad.send(&MonitorToDatad::Mtu { mtu }, &[]).await {
        tracing::warn!("could not tell the data plane the MTU {mtu}: {e}");
    }
}

/// Hands the owner's current sockets to the data plane.
async fn announce(owner: &SocketOwner, datad: &Channel) {
    let (msg, fds) = owner.announcement();
    if let Err(e) = datad.send(&msg, &fds).await {
        // The data plane's channel is gone: its next receive stops the tunnel.
        tracing::warn!("could not hand new sockets to the data plane: {e}");
    }
}

/// [`Control::Bump`]: the data plane holds duplicates of the sockets, so the port is only
/// free once it has taken other ones. New sockets on a random port go to it first; then
/// the old port is bound again (retried while the data plane lets go of the old sockets)
/// and those replace them. If the old port cannot be had, the random one stays.
async fn bump(owner: &mut SocketOwner, datad: &Channel) -> io::Result<Option<u16>> {
    let port = owner.sockets.port;
    let interim = wg_monitor::sockets::bind(0, owner.fwmark, owner.offload)?;
    owner.sockets = interim;
    announce(owner, datad).await;
    let deadline = tokio::time::Instant::now() + REBIND_WAIT;
    loop {
        match wg_monitor::sockets::bind(port, owner.fwmark, owner.offload) {
            Ok(sockets) => {
                owner.sockets = sockets;
                announce(owner, datad).await;
                return Ok(None);
            }
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(REBIND_RETRY).await;
            }
            Err(e) => {
                tracing::warn!(
                    "cannot bind port {port} again ({e}); now on port {}",
                    owner.sockets.port
                );
                return Ok(Some(owner.sockets.port));
            }
        }
    }
}

async fn next_control(control: Option<&mut mpsc::UnboundedReceiver<Control>>) -> Option<Control> {
    match control {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs the whole daemon in this process until the interface goes away or a part fails,
/// serving the UAPI socket `uapi` (clients checked as the daemon checks them).
/// Must be called inside a tokio runtime with I/O and time enabled.
pub async fn run(
    interface: String,
    tun: Tun,
    uapi: UnixListener,
    sockets: UdpSockets,
) -> Result<Stopped, EmbedError> {
    serve(Embedding {
        interface,
        tun,
        uapi: UapiSource::socket(uapi)?,
        sockets,
        crypto_threads: usize::from(wg_ipc::worker::default_crypto_threads()),
        control: None,
    })
    .await
}

/// Runs the whole daemon in this process on `embedding` until the interface goes away, a
/// part fails, or the owner drops its [`Control`] sender. Must be called inside a tokio
/// runtime with I/O and time enabled.
pub async fn serve(embedding: Embedding) -> Result<Stopped, EmbedError> {
    let Embedding {
        interface,
        tun,
        uapi,
        sockets,
        crypto_threads,
        mut control,
    } = embedding;
    let (keyd_to_datad, datad_to_keyd) = Channel::memory_pair();
    let (monitor_keyd, keyd_monitor) = Channel::memory_pair();
    let (monitor_datad, datad_monitor) = Channel::memory_pair();

    // The data plane gets a duplicate (the same open device): `tun` stays here, to read the
    // MTU from.
    let datad_startup = wg_datad::Startup {
        tun: tun.as_fd().try_clone_to_owned()?,
        udp4: sockets.v4.try_clone()?,
        udp6: sockets.v6.as_ref().map(|s| s.try_clone()).transpose()?,
        udp_gso: sockets.offload.gso,
        crypto_threads,
        keyd: datad_to_keyd,
        monitor: Some(datad_monitor),
        lockdown: None,
    };
    let keyd_startup = wg_keyd::KeydStartup {
        interface,
        uapi,
        datad: keyd_to_datad,
        monitor: keyd_monitor,
        listen_port: sockets.port,
    };
    let offload = sockets.offload;
    let mut owner = SocketOwner {
        sockets,
        fwmark: 0,
        offload,
        // In one process the caller's capabilities decide.
        low_ports: true,
    };
    let mut keyd = tokio::spawn(wg_keyd::serve(keyd_startup));
    let mut datad = tokio::spawn(wg_datad::serve(datad_startup));
    let mut mtu = MtuWatch::default();
    // The data plane starts from the MTU the device was created with; as the monitor after
    // `Start`, tell it the current one (queued: it reads the channel once it runs).
    if let Some(value) = mtu.on_start(tun.mtu()) {
        send_mtu(&monitor_datad, value).await;
    }
    let mut poll = tokio::time::interval(MTU_POLL);

    let result = loop {
        tokio::select! {
            m = monitor_keyd.recv::<KeydToMonitor>() => match m {
                Ok(Received { msg: KeydToMonitor::Reconfigure { port, fwmark }, .. }) => {
                    // The monitor's own decision; only the sending is done here.
                    let outcome = owner.handle_reconfigure(port, fwmark);
                    if let Some((msg, fds)) = &outcome.announce
                        && let Err(e) = monitor_datad.send(msg, fds).await
                    {
                        // The data plane's channel is gone: its next receive stops the tunnel.
                        tracing::warn!("could not hand new sockets to the data plane: {e}");
                    }
                    if let Err(e) = monitor_keyd.send(&outcome.reply, &[]).await {
                        break Err(EmbedError::Keyd(e.to_string()));
                    }
                }
                // As the monitor: a Hello of another protocol version is fatal.
                Ok(Received { msg: KeydToMonitor::Hello(hello), .. }) => {
                    if let Err(e) = hello.check(Role::Keyd) {
                        break Err(EmbedError::Keyd(format!("bad hello: {e}")));
                    }
                }
                // In one process there is nothing to restart: the tunnel stops with the reason.
                Ok(Received { msg: KeydToMonitor::RestartDataPlane { reason, .. }, .. }) => {
                    break Err(EmbedError::Datad(format!("the key process gave up on the data plane: {reason}")));
                }
                Err(e) => break Err(EmbedError::Keyd(e.to_string())),
            },
            m = monitor_datad.recv::<DatadToMonitor>() => match m {
                // Believed as it is (the monitor checks the device first): in one process the
                // data plane is no less trusted than this code, and it owns the TUN here.
                Ok(Received { msg: DatadToMonitor::InterfaceGone, .. }) => break Ok(Stopped::InterfaceGone),
                Ok(Received { msg: DatadToMonitor::Hello(_), .. }) => {}
                Err(e) => break Err(EmbedError::Datad(e.to_string())),
            },
            c = next_control(control.as_mut()) => match c {
                None => break Ok(Stopped::Requested),
                Some(Control::Bump(reply)) => {
                    let _ = reply.send(bump(&mut owner, &monitor_datad).await);
                }
                Some(Control::SocketFds(reply)) => {
                    let fds = (
                        Some(owner.sockets.v4.as_raw_fd()),
                        owner.sockets.v6.as_ref().map(AsRawFd::as_raw_fd),
                    );
                    let _ = reply.send(fds);
                }
                Some(Control::Roaming(enabled, reply)) => {
                    if let Err(e) = monitor_datad.send(&MonitorToDatad::Roaming { enabled }, &[]).await {
                        tracing::warn!("could not tell the data plane about roaming: {e}");
                    }
                    let _ = reply.send(());
                }
            },
            _ = poll.tick() => {
                if let Some(value) = mtu.on_poll(tun.mtu()) {
                    tracing::info!("the MTU of {} is now {value}", tun.name());
                    send_mtu(&monitor_datad, value).await;
                }
            }
            r = &mut keyd => break Err(EmbedError::Keyd(match r {
                Ok(Ok(())) => "stopped".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            })),
            r = &mut datad => break match r {
                Ok(Ok(wg_datad::Exit::InterfaceGone)) => Ok(Stopped::InterfaceGone),
                Ok(Err(e)) => Err(EmbedError::Datad(e.to_string())),
                Err(e) => Err(EmbedError::Datad(e.to_string())),
            },
        }
    };
    keyd.abort();
    datad.abort();
    result
}
