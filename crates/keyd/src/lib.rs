//! The key process: holds the static private key and every PSK, runs the Noise handshakes
//! and serves the UAPI socket (which carries private keys).
//!
//! **Owns:** the device configuration (how a UAPI `set` becomes oracle state and messages
//! for the data plane: [`config`], shared with the in-process tunnel), the
//! [`handshakes::Handshakes`] oracle, the
//! bookkeeping of the data plane ([`link::DatadLink`]: what keyd sends it, what it may
//! ask, and when it is given up on), and the UAPI server.
//!
//! **Trusts:** nothing from the data plane: every message is checked for what it means
//! (not only its form), the memory it costs is bounded, and keyd never waits on it
//! ([`link`]); beyond "this message passed the MAC checks" nothing is believed (MAC1 is
//! checked again). Nothing from UAPI clients until their credentials are checked.
//!
//! Both cores are sans-IO and driven by the event loop in `service`: feed
//! [`link::DatadLink::on_message`] a decoded `DatadToKeyd`, the oracle, `now`, the wall
//! clock and a random number generator; it queues the answers
//! ([`link::DatadLink::front`]/[`link::DatadLink::sent_front`]) and returns finished
//! statistics or the [`wg_messages::messages::Misbehaviour`] that ends the data plane. The fuzz
//! target `keyd_datad_messages` drives exactly that.
//!
//! The oracle reads no clock and no OS randomness itself:
//! [`handshakes::Handshakes::on_datad`] takes `now` (the protocol's timers: one initiation
//! per `REKEY_TIMEOUT`, flood and cookie ages), `wall` (the TAI64N timestamp of the
//! initiations it makes) and `rng` (ephemeral keys, receiver indices) as arguments, and
//! says what it did ([`handshakes::Answer`]) or why it did nothing
//! ([`handshakes::Refusal`]). The service seeds one `StdRng` from the OS at start; tests,
//! the simulation and the fuzz target `keyd_oracle` pass seeded ones and fixed clocks.
//!
//! **May depend on:** handshake, cookie, wire, ipc, uapi, tokio, and nix for the thread's
//! CPU clock. No network sockets, no
//! TUN, no router.
//!
//! **Platforms:** the cores ([`config`], [`handshakes`], [`link`]) are plain code and
//! build everywhere (the in-process tunnel and the simulation use them). The process
//! itself (feature `service`: `serve`, `run_worker`) runs on Linux, macOS, FreeBSD and
//! NetBSD over `wg-ipc`'s channels and `wg-sandbox`'s lock-down (it has run on Linux only);
//! elsewhere the feature adds nothing.
#![forbid(unsafe_code)]

pub mod config;
pub mod handshakes;
pub mod link;
pub mod pool;

/// The X25519 implementation the handshakes use (`aws-lc` or `x25519-dalek`).
pub const X25519_BACKEND: &str = wg_handshake::X25519_BACKEND;
#[cfg(keyd_service)]
mod service;

#[cfg(keyd_service)]
pub use service::{KeydStartup, UapiRequest, UapiSource, serve};

/// Why the key process stopped.
#[cfg(keyd_service)]
#[derive(Debug, thiserror::Error)]
pub enum KeydError {
    /// The monitor went away or broke protocol.
    #[error("lost the monitor: {0}")]
    Monitor(wg_ipc::IpcError),
    /// The sandbox could not be installed: refuse to run without it.
    #[error("cannot sandbox the key process: {0}")]
    Sandbox(String),
    /// A peer process sent something this phase does not allow.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// An OS call failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[cfg(keyd_service)]
/// The key process's entry point after `exec`: waits for the monitor's `Start` with the
/// UAPI listener and the data-plane channel, then serves.
pub async fn run_worker(
    monitor: wg_ipc::Channel,
    lockdown: wg_ipc::worker::Lockdown,
) -> Result<(), KeydError> {
    use wg_ipc::messages::{Hello, KeydToMonitor, MonitorToKeyd, Role};
    monitor
        .send(&KeydToMonitor::Hello(Hello::new(Role::Keyd)), &[])
        .await
        .map_err(KeydError::Monitor)?;
    let hello = monitor
        .recv::<MonitorToKeyd>()
        .await
        .map_err(KeydError::Monitor)?;
    match hello.msg {
        MonitorToKeyd::Hello(h) => h
            .check(Role::Monitor)
            .map_err(|e| KeydError::Monitor(e.into()))?,
        _ => return Err(KeydError::Protocol("expected hello")),
    }
    let start = monitor
        .recv::<MonitorToKeyd>()
        .await
        .map_err(KeydError::Monitor)?;
    let MonitorToKeyd::Start {
        interface,
        listen_port,
    } = start.msg
    else {
        return Err(KeydError::Protocol("expected start"));
    };
    let mut fds = start.fds.into_iter();
    let (Some(uapi), Some(datad)) = (fds.next(), fds.next()) else {
        return Err(KeydError::Protocol("start without descriptors"));
    };
    // Everything that needs a descriptor's type, flags or registration happens before the
    // sandbox: FreeBSD's capability mode leaves each only the rights its kind needs.
    let uapi = UapiSource::socket(std::os::unix::net::UnixListener::from(uapi))?;
    let datad = wg_ipc::Channel::from_fd(datad)?;
    lockdown().map_err(KeydError::Sandbox)?;
    serve(KeydStartup {
        interface,
        uapi,
        datad,
        monitor,
        listen_port,
    })
    .await
}
