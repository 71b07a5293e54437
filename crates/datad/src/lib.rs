//! The data plane: moves packets between the TUN device and the UDP sockets.
//!
//! **Owns:** the I/O around the protocol core: the TUN and UDP descriptors it is handed
//! and the event loop (one tokio task waiting on TUN, UDP, keyd, the monitor and one
//! timer). It has two planes around the same core and the same keyd and monitor
//! protocol:
//! - the **batched plane** ([`serve`] on Linux): TUN super-packets split and coalesced with
//!   `wg-offload`, UDP runs sent with `UDP_SEGMENT` and received with `UDP_GRO`, and the
//!   crypto helper threads;
//! - the **portable plane** ([`serve_portable`]; [`serve`] on macOS, FreeBSD and NetBSD):
//!   one packet per TUN read or write, framed as [`TunFraming`] says (bare, or behind the
//!   4-byte address-family header of utun and tun(4), each OS's numbers from
//!   `wg-platform`), one datagram per UDP system call, the AEAD on the event loop. No
//!   batching, no offloads, no helper threads.
//!
//! Every decision (routing, keypairs, timers, cookies, the load meter, what to ask keyd)
//! is [`wg_device::Device`]'s: this crate feeds it per packet and drains what it queues,
//! and adds no logic of its own.
//!
//! **Trusts:** nothing from the network, nor a TUN frame's header (checked against the
//! packet before the packet is looked at); the key process for configuration and session
//! keys; the monitor for descriptors and the MTU. It never receives a static private key
//! or a PSK, and it must not depend on `wg-handshake` (enforced in `deny.toml`).
//!
//! **May depend on:** device, wire, router (job types, buffer room), ipc, platform (the
//! address-family header), tokio, nix (the batched UDP calls; the portable plane's TUN
//! reads and writes), rand (seeding the device); on Linux also tun, offload and rayon
//! (the crypto helper threads).
//!
//! **Per OS:** Linux runs the batched plane (`sendmmsg`, UDP GSO/GRO, TUN offloads) and
//! that is what the daemon runs there; the portable plane builds on Linux too and its
//! tests run there (over socket pairs standing in for the TUN). macOS, FreeBSD and NetBSD
//! run the portable plane, with `Start`'s `udp_gso` and `crypto_threads` ignored: it
//! compiles there (CI's clippy), it has not run there. Elsewhere this crate compiles to
//! an empty library (see the platform table in the README).
#![cfg(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
))]
// One `unsafe` call per plane: registering a descriptor with the reactor (`udp::register`
// for a UDP socket read for readability alone on Linux, `portable::register` for the
// TUN), which tokio offers only as an `unsafe` function.
#![deny(unsafe_code)]

#[cfg(target_os = "linux")]
mod batch;
#[cfg(target_os = "linux")]
mod crypto;
#[cfg(target_os = "linux")]
mod plane;
mod portable;
mod shared;
#[cfg(target_os = "linux")]
mod udp;

use std::net::UdpSocket;
use std::os::fd::OwnedFd;

#[cfg(target_os = "linux")]
pub use plane::serve;
pub use portable::{TunFraming, serve_portable};

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
    /// The TUN interface was deleted (`ip link del`), or (portable plane) its descriptor
    /// reached its end: the daemon should exit cleanly.
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
    /// The batched plane's; the portable plane ignores it.
    pub udp_gso: bool,
    /// Threads besides the event loop that share the encryption and decryption of a batch.
    /// The batched plane's; the portable plane ignores it (its AEAD runs on the loop).
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
    // On macOS, FreeBSD and NetBSD `serve` is the portable plane, which ignores `udp_gso`
    // and `crypto_threads` (one datagram per system call, the AEAD on the event loop).
    let mut startup = startup_from_fds(start.fds, has_ipv6, udp_gso, crypto_threads, monitor)?;
    startup.lockdown = Some(lockdown);
    #[cfg(all(target_os = "linux", feature = "test-hooks"))]
    if std::env::var_os(PORTABLE_PLANE_TEST_ENV).is_some() {
        return serve_portable_on_linux(startup).await;
    }
    serve(startup).await
}

/// Test builds only (feature `test-hooks`): set, the Linux data plane runs the portable
/// plane (macOS's and the BSDs') on its TUN, so the end-to-end tests can play it against
/// wireguard-go through the real monitor, keyd and spawner.
#[cfg(all(target_os = "linux", feature = "test-hooks"))]
pub const PORTABLE_PLANE_TEST_ENV: &str = "WG_RS_TEST_PORTABLE_PLANE";

/// The portable plane on a Linux TUN, which must carry bare packets (the daemon started
/// with `--no-tun-offload`: no virtio-net header).
#[cfg(all(target_os = "linux", feature = "test-hooks"))]
async fn serve_portable_on_linux(mut startup: Startup) -> Result<Exit, DatadError> {
    let tun =
        wg_tun::Tun::from_fd(startup.tun).map_err(|e| DatadError::Tun(std::io::Error::other(e)))?;
    if tun.vnet_hdr() {
        return Err(DatadError::Tun(std::io::Error::other(
            "the portable data plane reads bare packets: start wireguard-rs with --no-tun-offload",
        )));
    }
    startup.tun = tun.into_fd();
    tracing::warn!("test hook: the portable data plane (macOS's and the BSDs') runs on Linux");
    serve_portable(startup, TunFraming::Raw).await
}

/// Runs the data plane until the interface disappears or a peer process fails: on macOS,
/// FreeBSD and NetBSD the portable plane, with the OS's tun framing
/// ([`TunFraming::native`]). `udp_gso` and `crypto_threads` are ignored here.
#[cfg(not(target_os = "linux"))]
pub async fn serve(startup: Startup) -> Result<Exit, DatadError> {
    serve_portable(startup, TunFraming::native()).await
}
