//! WireGuard as a library: an in-process tunnel on an open TUN descriptor, for apps
//! (an iOS or macOS `NEPacketTunnelProvider`, an Android `VpnService`, a desktop app that
//! owns its TUN device).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::os::unix::net::UnixDatagram;
//! use wg_tunnel::{Framing, Tunnel};
//!
//! // A real app passes its TUN descriptor; a datagram socket pair stands in for one here.
//! let (tun, _app_side) = UnixDatagram::pair()?;
//! let tunnel = Tunnel::start(
//!     tun.into(),
//!     Framing::Raw,
//!     "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n\
//!      listen_port=0\n\
//!      public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n\
//!      endpoint=192.0.2.1:51820\n\
//!      allowed_ip=10.0.0.2/32\n",
//! )?;
//! assert!(tunnel.get()?.contains("allowed_ip=10.0.0.2/32\n"));
//! tunnel.stop()?;
//! # Ok(())
//! # }
//! ```
//!
//! **Owns:** one thread per tunnel running a current-thread tokio runtime, and in it one
//! task: the *driver* of the data plane's protocol core ([`wg_device::Device`], the same
//! sans-IO state machine the daemon's data plane drives) and of the handshake oracle
//! ([`wg_keyd::handshakes::Handshakes`], the same one the key process runs), glued by a
//! synchronous pump as in the simulation: each message the device has for the key part
//! goes to the oracle and each answer back, after every input. The task selects over the
//! TUN descriptor (one packet per read or write, [`Framing`] for the utun header), an
//! IPv4 and an IPv6 UDP socket on the listen port, the device's next timer and the
//! [`Tunnel`] handle's requests. Configuration is UAPI text, applied by the very code of
//! the daemon: `wg_uapi` parses and validates it all or nothing, and
//! [`wg_keyd::config::commit`] turns it into oracle state and device messages. It is not
//! datad: no batching, no offloads, no crypto threads; one packet at a time. That is the
//! [`Backend::Portable`] driver. On Linux, a real TUN device with [`Framing::Raw`] is
//! instead run by [`Backend::Datad`]: the daemon itself in process (`wg-embed`: the key
//! process's service fed UAPI requests from the handle, the data plane `wg_datad::serve`
//! with its batched TUN and UDP I/O, virtio-net super-packets if the TUN has the header,
//! UDP GSO/GRO and crypto threads, and the monitor's socket handling), as tasks of the
//! same thread's runtime; [`Tunnel::backend`] says which runs.
//!
//! **Trusts:** its caller, for the TUN descriptor (it must be one packet per read, framed
//! as said) and for the settings (they carry the private key; the caller is the owner of
//! the tunnel). Nothing from the network: every datagram passes the device core's checks
//! (MAC1, load and cookies, index, replay and AEAD, allowed IPs) before anything else.
//!
//! **No process boundary around the keys.** The daemon keeps the static private key and
//! the PSKs in the key process, away from the process that parses packets. Here both
//! halves share one address space: the same cores run with the same checks, but a memory
//! safety bug in packet handling (the cores are `forbid(unsafe_code)`, this crate has
//! one registration call; the AEAD is `ring`'s, or RustCrypto's without the `ring`
//! feature) could reach the key. With the portable driver the key process's budgets for a
//! hostile data plane (`wg_keyd::link`) are left out too (the data plane is the same task);
//! the Linux backend ([`Backend::Datad`]) runs keyd's own service, budgets included, but in
//! the same address space they bound work, not a compromise. The settings text and the `get` answer are zeroized when
//! dropped ([`Zeroizing`]), and neither appears in `Debug` output, errors or logs.
//!
//! # Platforms
//!
//! - **Linux, Android:** a TUN descriptor without packet information (`IFF_NO_PI`; what
//!   `wg_tun::Tun` and `VpnService.Builder.establish()` give) with [`Framing::Raw`]. On
//!   Android, [`Tunnel::socket_fds`] gives the UDP descriptors for
//!   `VpnService.protect()`, again after every [`Tunnel::bump_sockets`]. `fwmark` sets
//!   `SO_MARK` (needs `CAP_NET_ADMIN`).
//! - **Apple (iOS, macOS):** the utun descriptor of the packet tunnel provider with
//!   [`Framing::AfHeader`] (a 4-byte big-endian `AF_INET`/`AF_INET6` before each packet).
//!   `fwmark` does not exist there: any value but 0 is refused. Call
//!   [`Tunnel::set_roaming`]`(false)` where wireguard-go's
//!   `DisableSomeRoamingForBrokenMobileSemantics` is wanted.
//! - The descriptor is switched to non-blocking mode; it and the sockets are closed when
//!   the tunnel stops. If the TUN descriptor fails or reaches its end (the interface was
//!   deleted, the other side closed), the tunnel stops by itself and further calls return
//!   [`TunnelError::Stopped`].
//! - Padding uses the default MTU of 1420 (it only caps the padding of full-size
//!   packets; packets of any size up to 65535 bytes are carried).
//! - **FreeBSD, NetBSD:** the portable driver compiles there (CI checks it); their tun(4)
//!   framing is not wired in yet and it has not run there.
//! - **Windows:** not yet (a Wintun session is no descriptor): this crate compiles to an
//!   empty library there.
//!
//! **May depend on:** `wg-device`, `wg-router` (buffer room constants), `wg-keyd` (oracle
//! and configuration commit, the key process's code run in process), `wg-uapi`, `wg-wire`,
//! `tokio`, `socket2`, `nix`, `libc` (address-family numbers); on Linux, for
//! [`Backend::Datad`], `wg-embed` (and through it keyd's service and datad), `wg-monitor`
//! (binding the sockets), `wg-tun` (adopting the descriptor), `wg-ipc`. One `unsafe` call:
//! registering the TUN descriptor with tokio's reactor (`AsyncFd::register`, whose safe
//! form tokio deprecated as unsound), on the descriptor the tunnel owns alone.
#![cfg(unix)]
#![deny(unsafe_code)]

mod driver;
#[cfg(target_os = "linux")]
mod fast;
mod framing;
mod sockets;

use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::mpsc::sync_channel;
use std::thread::JoinHandle;
use std::time::SystemTime;

use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use wg_uapi::{Errno, Request as UapiRequest, SetRequest, UapiError};
pub use wg_wire::PublicKey;
pub use zeroize::Zeroizing;

use crate::driver::{Reply, Request};
pub use crate::framing::{AF_HEADER_LEN, FrameError, Framing};

/// The end of the daemon's `get` answer, which [`Tunnel::get`] leaves out.
const GET_TRAILER: &str = "errno=0\n\n";

/// Why a tunnel call failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The settings were refused, with the error number the daemon's UAPI socket would
    /// answer (the positive value: 22 EINVAL for a bad key or value, 71 EPROTO for a line
    /// without `=`, 5 EIO for an input over the limits, 98 EADDRINUSE when the listen
    /// port or fwmark cannot be applied, 13 EACCES for a port the process may not bind;
    /// Linux numbering on every platform, as the UAPI protocol has it). Nothing of the
    /// settings was applied. The message never holds key material.
    #[error("settings refused (errno {errno}): {message}")]
    Uapi {
        /// The errno, as `wg_uapi::Errno::code`.
        errno: i32,
        /// What was wrong.
        message: String,
    },
    /// The tunnel is no longer running (it was stopped, or stopped by itself when its
    /// TUN descriptor failed).
    #[error("the tunnel is not running")]
    Stopped,
    /// An OS call failed (starting the thread or runtime, the descriptor, the sockets).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An argument the tunnel cannot use.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl TunnelError {
    /// A positive errno for the error, for a C caller: the UAPI errno, the OS error, 22
    /// (EINVAL) for an invalid argument; `None` for [`TunnelError::Stopped`].
    pub fn errno(&self) -> Option<i32> {
        match self {
            TunnelError::Uapi { errno, .. } => Some(*errno),
            TunnelError::Io(e) => Some(e.raw_os_error().unwrap_or(Errno::Io.code())),
            TunnelError::Invalid(_) => Some(Errno::Invalid.code()),
            TunnelError::Stopped => None,
        }
    }
}

/// The daemon's answer to a refused request, as an error.
fn uapi_error(e: &UapiError) -> TunnelError {
    TunnelError::Uapi {
        // Where wireguard-go closes without an answer, keyd answers EINVAL.
        errno: e.errno().unwrap_or(Errno::Invalid).code(),
        message: e.to_string(),
    }
}

/// Parses settings text: a UAPI `set` body with or without its `set=1` line, with or
/// without the final newline or empty line. The copy made here is zeroized.
fn parse_settings(settings: &str) -> Result<SetRequest, TunnelError> {
    const SET: &str = "set=1\n";
    let mut text = Zeroizing::new(String::with_capacity(settings.len() + SET.len() + 1));
    if !settings.starts_with(SET) {
        text.push_str(SET);
    }
    text.push_str(settings);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    match wg_uapi::parse_request(text.as_bytes()) {
        Ok(UapiRequest::Set(request)) => Ok(request),
        Ok(UapiRequest::Get) => Err(TunnelError::Invalid("not a set request".to_owned())),
        Err(e) => Err(uapi_error(&e)),
    }
}

/// What the tunnel knows about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Where its packets go: the endpoint learned from its packets, else the configured
    /// one.
    pub endpoint: Option<SocketAddr>,
    /// When the last handshake completed.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer (transport and handshake messages).
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// Which implementation runs a tunnel ([`Tunnel::backend`]). Both behave the same behind
/// the API (the same settings semantics, errors and answers); they differ in speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The portable driver: one packet per system call over the protocol core, on any
    /// descriptor with [`Framing`] (Apple utun, a socket pair standing in for a TUN, or a
    /// Linux TUN the data plane cannot drive).
    Portable,
    /// The daemon in process (Linux, on a real TUN device with [`Framing::Raw`];
    /// Android not yet: the daemon's crates build on Linux only): `wg-embed` runs the key process's service and the data plane
    /// (batched TUN and UDP I/O, virtio-net super-packets when the TUN was created with
    /// the header, UDP GSO and GRO, crypto threads) as tasks of the tunnel's thread.
    Datad,
}

/// A running tunnel: a handle to its thread. Calls block until the thread answers (it
/// answers between packets, within microseconds); they may be made from any thread.
/// Dropping the handle stops the tunnel, as [`Tunnel::stop`] does.
pub struct Tunnel {
    control: UnboundedSender<Request>,
    thread: Option<JoinHandle<()>>,
    backend: Backend,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("running", &!self.control.is_closed())
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    /// Starts a tunnel on an open TUN device (non-blocking mode is set here) with the
    /// UAPI `set` body (`private_key=...\nlisten_port=...\npublic_key=...\n...`, as
    /// wireguard-go's `wgTurnOn` takes it; with or without a leading `set=1` line).
    /// Without `listen_port` (or with 0) a random port is bound. Returns when the sockets
    /// are bound and the settings applied, or with why not (then nothing keeps running
    /// and the descriptor is closed).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::unix::net::UnixDatagram;
    /// use wg_tunnel::{Framing, Tunnel, TunnelError};
    ///
    /// let (tun, _app_side) = UnixDatagram::pair()?;
    /// let tunnel = Tunnel::start(tun.into(), Framing::Raw, "listen_port=0\n")?;
    /// tunnel.stop()?;
    ///
    /// // A bad key is the daemon's EINVAL.
    /// let (tun, _app_side) = UnixDatagram::pair()?;
    /// let refused = Tunnel::start(tun.into(), Framing::Raw, "private_key=00\n");
    /// assert!(matches!(refused, Err(TunnelError::Uapi { errno: 22, .. })));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// On a real device (root, Linux):
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let tun = wg_tun::Tun::create("wg0", 1420)?;
    /// let tunnel = wg_tunnel::Tunnel::start(
    ///     tun.into_fd(),
    ///     wg_tunnel::Framing::Raw,
    ///     "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n",
    /// )?;
    /// # drop(tunnel);
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(tun: OwnedFd, framing: Framing, settings: &str) -> Result<Tunnel, TunnelError> {
        let request = parse_settings(settings)?;
        set_nonblocking(&tun)?;
        let (control, requests) = unbounded_channel();
        let (ready, started) = sync_channel(1);
        let builder = std::thread::Builder::new().name("wg-tunnel".to_owned());
        #[cfg(target_os = "linux")]
        let fast = match framing {
            Framing::Raw => fast::adopt(&tun),
            Framing::AfHeader => None,
        };
        #[cfg(target_os = "linux")]
        let (backend, thread) = match fast {
            Some(device) => {
                // The device holds a duplicate; the original closes here.
                drop(tun);
                let thread = builder.spawn(move || fast::run(device, request, requests, ready))?;
                (Backend::Datad, thread)
            }
            None => {
                let thread =
                    builder.spawn(move || driver::run(tun, framing, request, requests, ready))?;
                (Backend::Portable, thread)
            }
        };
        #[cfg(not(target_os = "linux"))]
        let (backend, thread) = (
            Backend::Portable,
            builder.spawn(move || driver::run(tun, framing, request, requests, ready))?,
        );
        let result = started.recv();
        let tunnel = Tunnel {
            control,
            thread: Some(thread),
            backend,
        };
        match result {
            Ok(Ok(())) => Ok(tunnel),
            Ok(Err(e)) => {
                drop(tunnel);
                Err(e)
            }
            Err(_) => {
                drop(tunnel);
                Err(TunnelError::Stopped)
            }
        }
    }

    /// Sends a request and waits for its answer.
    fn call<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, TunnelError> {
        let (reply, answer) = sync_channel(1);
        self.control
            .send(request(reply))
            .map_err(|_| TunnelError::Stopped)?;
        answer.recv().map_err(|_| TunnelError::Stopped)?
    }

    /// Applies a UAPI `set` body, with the daemon's semantics and errors: validated
    /// whole, all or nothing (`replace_peers=true`, `remove=true`, `update_only=true`,
    /// `replace_allowed_ips=true` as in `wg(8)`); a new `listen_port` rebinds the sockets
    /// (errno 98 EADDRINUSE if it cannot, and nothing changes).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixDatagram;
    /// # use wg_tunnel::{Framing, Tunnel, TunnelError};
    /// # let (tun, _app_side) = UnixDatagram::pair()?;
    /// # let tunnel = Tunnel::start(tun.into(), Framing::Raw, "")?;
    /// tunnel.set(
    ///     "public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n\
    ///      allowed_ip=10.0.0.0/24\n\
    ///      persistent_keepalive_interval=25\n",
    /// )?;
    /// // A line without `=` is EPROTO, as from the daemon.
    /// assert!(matches!(tunnel.set("nonsense\n"), Err(TunnelError::Uapi { errno: 71, .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn set(&self, settings: &str) -> Result<(), TunnelError> {
        let request = parse_settings(settings)?;
        self.call(|reply| Request::Set(Box::new(request), reply))
    }

    /// The configuration and runtime state as the UAPI `get` answer has it, in
    /// wireguard-go's order, **without** the final `errno=0` line and empty line (the key
    /// `=` value lines only, each ending in `\n`: wireguard-go's `IpcGet`, what its
    /// `wgGetConfig` returns). It holds the private key and PSKs: zeroized on drop.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixDatagram;
    /// # use wg_tunnel::{Framing, Tunnel};
    /// # let (tun, _app_side) = UnixDatagram::pair()?;
    /// let tunnel = Tunnel::start(tun.into(), Framing::Raw, "listen_port=0\n")?;
    /// let text = tunnel.get()?;
    /// assert!(text.starts_with("listen_port="));
    /// assert!(!text.contains("errno="));
    /// # Ok(())
    /// # }
    /// ```
    pub fn get(&self) -> Result<Zeroizing<String>, TunnelError> {
        self.call(Request::Get)
    }

    /// Each configured peer's public key, endpoint, last handshake and byte counters, in
    /// configuration order.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixDatagram;
    /// # use wg_tunnel::{Framing, Tunnel};
    /// # let (tun, _app_side) = UnixDatagram::pair()?;
    /// let tunnel = Tunnel::start(
    ///     tun.into(),
    ///     Framing::Raw,
    ///     "public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n\
    ///      endpoint=192.0.2.1:51820\n",
    /// )?;
    /// let stats = tunnel.peer_stats()?;
    /// assert_eq!(stats[0].endpoint, Some("192.0.2.1:51820".parse()?));
    /// assert_eq!(stats[0].last_handshake, None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn peer_stats(&self) -> Result<Vec<PeerStats>, TunnelError> {
        self.call(Request::Stats)
    }

    /// Replaces the UDP sockets (after a network change), on the same port if it is still
    /// free, else on a random one. The new sockets have new descriptors: an Android app
    /// protects them again ([`Tunnel::socket_fds`]).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixDatagram;
    /// # use wg_tunnel::{Framing, Tunnel};
    /// # let (tun, _app_side) = UnixDatagram::pair()?;
    /// # let tunnel = Tunnel::start(tun.into(), Framing::Raw, "")?;
    /// let before = tunnel.socket_fds()?;
    /// tunnel.bump_sockets()?;
    /// assert_ne!(tunnel.socket_fds()?, before);
    /// # Ok(())
    /// # }
    /// ```
    pub fn bump_sockets(&self) -> Result<(), TunnelError> {
        self.call(Request::Bump)
    }

    /// The raw descriptors of the IPv4 and IPv6 UDP sockets (`None` where there is none:
    /// no IPv6 on the host, or a failed [`Tunnel::bump_sockets`]). They stay the tunnel's:
    /// valid until the next bump, listen-port change or stop; do not close them.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixDatagram;
    /// # use wg_tunnel::{Framing, Tunnel};
    /// # let (tun, _app_side) = UnixDatagram::pair()?;
    /// # let tunnel = Tunnel::start(tun.into(), Framing::Raw, "")?;
    /// let (v4, _v6) = tunnel.socket_fds()?;
    /// assert!(v4.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn socket_fds(&self) -> Result<(Option<RawFd>, Option<RawFd>), TunnelError> {
        self.call(Request::SocketFds)
    }

    /// Roaming on (the default) or off. Off is wireguard-go's
    /// `DisableSomeRoamingForBrokenMobileSemantics`: a peer with a configured endpoint
    /// keeps it, whatever address its packets come from; a peer without one still learns
    /// its endpoint from its packets.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixDatagram;
    /// # use wg_tunnel::{Framing, Tunnel};
    /// # let (tun, _app_side) = UnixDatagram::pair()?;
    /// # let tunnel = Tunnel::start(tun.into(), Framing::Raw, "")?;
    /// tunnel.set_roaming(false)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_roaming(&self, enabled: bool) -> Result<(), TunnelError> {
        self.call(|reply| Request::Roaming(enabled, reply))
    }

    /// Stops the tunnel and waits for its thread: when this returns, the TUN descriptor
    /// and the sockets are closed. [`TunnelError::Stopped`] if it had stopped by itself.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixDatagram;
    /// # use wg_tunnel::{Framing, Tunnel};
    /// let (tun, app_side) = UnixDatagram::pair()?;
    /// let tunnel = Tunnel::start(tun.into(), Framing::Raw, "")?;
    /// tunnel.stop()?;
    /// // The tunnel's end of the pair is closed.
    /// assert!(app_side.send(&[0x45, 0, 0, 20]).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn stop(mut self) -> Result<(), TunnelError> {
        let was_running = self.control.send(Request::Stop).is_ok();
        let joined = self.thread.take().map(JoinHandle::join);
        match joined {
            Some(Err(_)) => Err(TunnelError::Invalid(
                "the tunnel thread panicked".to_owned(),
            )),
            _ if !was_running => Err(TunnelError::Stopped),
            _ => Ok(()),
        }
    }

    /// Which implementation runs this tunnel: [`Backend::Datad`] on a real Linux TUN
    /// device with [`Framing::Raw`], else [`Backend::Portable`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::os::unix::net::UnixDatagram;
    /// # use wg_tunnel::{Backend, Framing, Tunnel};
    /// // A socket pair is not a TUN device: the portable driver runs it.
    /// let (tun, _app_side) = UnixDatagram::pair()?;
    /// let tunnel = Tunnel::start(tun.into(), Framing::Raw, "")?;
    /// assert_eq!(tunnel.backend(), Backend::Portable);
    /// # Ok(())
    /// # }
    /// ```
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the tunnel still runs (it stops by itself when its TUN descriptor fails).
    pub fn is_running(&self) -> bool {
        !self.control.is_closed()
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.control.send(Request::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Puts the descriptor in non-blocking mode.
fn set_nonblocking(fd: &OwnedFd) -> Result<(), TunnelError> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}
