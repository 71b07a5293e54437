//! The data plane: moves packets between the TUN device and the UDP sockets.
//!
//! **Owns:** the I/O around the protocol core: the TUN and UDP descriptors it is handed,
//! the event loop (one tokio task waiting on TUN, UDP, keyd, the monitor and one timer),
//! the batches of the data path (TUN super-packets split and coalesced with `wg-offload`,
//! UDP runs sent with `UDP_SEGMENT` and received with `UDP_GRO`) and the crypto helper
//! threads. Every decision (routing, keypairs, timers, cookies, the load meter, what to
//! ask keyd) is [`wg_device::Device`]'s: this crate feeds it per packet and drains what it
//! queues, and adds no logic of its own.
//!
//! **Trusts:** nothing from the network; the key process for configuration and session
//! keys; the monitor for descriptors and the MTU. It never receives a static private key
//! or a PSK, and it must not depend on `wg-handshake` (enforced in `deny.toml`).
//!
//! **May depend on:** device, wire, router (job types), ipc, tun, offload, tokio, nix (the
//! batched UDP calls), rayon (the crypto helper threads), rand (seeding the device).
//!
//! **Linux only:** batched Linux I/O (`sendmmsg`, UDP GSO/GRO, TUN offloads) over the Linux
//! IPC. On every other OS this crate compiles to an empty library (see the platform table
//! in the README).
#![cfg(target_os = "linux")]
// One `unsafe` call: registering a UDP socket with the reactor for readability alone
// (`udp::register`), which tokio offers only as an `unsafe` function.
#![deny(unsafe_code)]

mod batch;
mod crypto;
mod plane;
mod udp;

use std::net::UdpSocket;
use std::os::fd::OwnedFd;

pub use plane::serve;

/// Why the data plane stopped.
#[derive(Debug, thiserror::Error)]
pub enum DatadError {
    /// The key process went away: fail closed.
    #[error("lost the key process: {0}")]
    Keyd(wg_ipc::IpcError),
    /// The monitor went away.
    #[error("lost the monitor: {0}")]
    Monitor(wg_ipc::IpcError),
    /// The TUN device failed.
    #[error("TUN device error: {0}")]
    Tun(std::io::Error),
    /// The sandbox could not be installed: refuse to run without it.
    #[error("cannot sandbox the data plane: {0}")]
    Sandbox(String),
    /// The monitor sent something that does not belong in this phase.
    #[error("protocol violation from {0}; stopping")]
    Protocol(&'static str),
    /// The key process broke the protocol the device core speaks with it.
    #[error(transparent)]
    Device(#[from] wg_device::DeviceError),
    /// Setting up the sockets or runtime failed.
    #[error("I/O setup failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How the data plane ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The TUN interface was deleted (`ip link del`): the daemon should exit cleanly.
    InterfaceGone,
}

/// What the data plane starts with.
pub struct Startup {
    /// The TUN device.
    pub tun: OwnedFd,
    /// UDP socket bound to the listen port on IPv4.
    pub udp4: UdpSocket,
    /// UDP socket bound to the same port on IPv6, if the host has IPv6.
    pub udp6: Option<UdpSocket>,
    /// Whether the UDP sockets may send batches with `UDP_SEGMENT` (the monitor probed it).
    pub udp_gso: bool,
    /// Threads besides the event loop that share the encryption and decryption of a batch.
    pub crypto_threads: usize,
    /// Channel to the key process.
    pub keyd: wg_ipc::Channel,
    /// Channel to the monitor (absent in some embeddings).
    pub monitor: Option<wg_ipc::Channel>,
    /// Run once the descriptors are set up and before the first untrusted byte is read:
    /// the sandbox.
    pub lockdown: Option<Lockdown>,
}

impl std::fmt::Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup")
            .field("tun", &self.tun)
            .field("udp4", &self.udp4)
            .field("udp6", &self.udp6)
            .field("udp_gso", &self.udp_gso)
            .field("sandboxed", &self.lockdown.is_some())
            .finish_non_exhaustive()
    }
}

pub use wg_ipc::worker::Lockdown;

/// Builds a [`Startup`] from the monitor's `Start` message and its descriptors
/// (TUN, IPv4 UDP, IPv6 UDP if `has_ipv6`, keyd channel).
pub fn startup_from_fds(
    fds: Vec<OwnedFd>,
    has_ipv6: bool,
    udp_gso: bool,
    crypto_threads: u16,
    monitor: wg_ipc::Channel,
) -> Result<Startup, DatadError> {
    let mut fds = fds.into_iter();
    let mut next = || {
        fds.next()
            .ok_or(DatadError::Protocol("monitor (missing fds)"))
    };
    let tun = next()?;
    let udp4 = UdpSocket::from(next()?);
    let udp6 = if has_ipv6 {
        Some(UdpSocket::from(next()?))
    } else {
        None
    };
    let keyd = wg_ipc::Channel::from_fd(next()?)?;
    Ok(Startup {
        tun,
        udp4,
        udp6,
        udp_gso,
        crypto_threads: usize::from(crypto_threads),
        keyd,
        monitor: Some(monitor),
        lockdown: None,
    })
}

/// The data-plane process's entry point after `exec`: waits for the monitor's `Start`
/// with its descriptors, then serves until the interface goes away.
pub async fn run_worker(monitor: wg_ipc::Channel, lockdown: Lockdown) -> Result<Exit, DatadError> {
    use wg_ipc::messages::{DatadToMonitor, Hello, MonitorToDatad, Role};
    monitor
        .send(&DatadToMonitor::Hello(Hello::new(Role::Datad)), &[])
        .await
        .map_err(DatadError::Monitor)?;
    let hello = monitor
        .recv::<MonitorToDatad>()
        .await
        .map_err(DatadError::Monitor)?;
    match hello.msg {
        MonitorToDatad::Hello(h) => h
            .check(Role::Monitor)
            .map_err(|_| DatadError::Protocol("monitor (bad hello)"))?,
        _ => return Err(DatadError::Protocol("monitor (no hello)")),
    }
    let start = monitor
        .recv::<MonitorToDatad>()
        .await
        .map_err(DatadError::Monitor)?;
    let MonitorToDatad::Start {
        has_ipv6,
        udp_gso,
        crypto_threads,
        ..
    } = start.msg
    else {
        return Err(DatadError::Protocol("monitor (expected start)"));
    };
    let mut startup = startup_from_fds(start.fds, has_ipv6, udp_gso, crypto_threads, monitor)?;
    startup.lockdown = Some(lockdown);
    serve(startup).await
}
