//! The platform layer of wireguard-rs: one small module per OS concern.
//!
//! **Owns**: what differs between operating systems below the sans-IO cores — how a TUN
//! device frames packets and is opened, which options a UDP socket takes (the routing
//! mark), where the UAPI endpoint lives and who may open it, how the processes talk (the
//! IPC transport where `SOCK_SEQPACKET` is missing), and how each worker is confined.
//!
//! Two layers, kept apart on purpose:
//! - **Pure logic** that needs no OS ([`af`], [`routing_mark`], [`stream_frame`],
//!   [`policy`], [`pipe`], [`windows_policy`]): compiled and unit-tested on every host,
//!   Linux included, so the facts each backend relies on are checked where CI runs.
//! - **Backends** ([`macos`], [`bsd`], [`windows`]), each compiled only for its OS, small
//!   wrappers that follow the OS's documented interface and take their decisions from the
//!   pure layer. Linux's backends are the older crates `wg-tun`, `wg-sandbox` and `wg-ipc`
//!   (offloads, seccomp, the `/proc` proofs), unchanged.
//!
//! **Trusts**: the kernel of the OS it runs on. Nothing read from a device, a socket or a
//! peer process is trusted: frames are length- and family-checked before use.
//!
//! **May depend on**: `libc`/`nix` (Unix backends), `windows-sys` (Windows backend),
//! `thiserror`. No other wireguard-rs crate, so every driver can use it.
#![deny(unsafe_code)]

pub mod af;
mod error;
pub mod pipe;
pub mod policy;
pub mod routing_mark;
pub mod stream_frame;
pub mod windows_policy;

#[cfg(any(target_os = "freebsd", target_os = "netbsd", target_os = "openbsd"))]
pub mod bsd;
#[cfg(target_os = "macos")]
pub mod macos;
#[cfg(windows)]
pub mod windows;

pub use af::Os;
pub use error::PlatformError;

/// The process roles a sandbox policy is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The key process: holds the static key, no network, no files.
    Keyd,
    /// The data plane: the TUN and UDP descriptors it was handed, nothing else.
    Datad,
    /// The unprivileged helper that starts data planes.
    Spawner,
}

/// A layer-3 TUN device as a data plane sees it: whole IPv4/IPv6 packets, with the OS's
/// framing (the 4-byte address-family header of utun and BSD tun, Wintun's ring) removed on
/// read and added on write.
pub trait TunDevice {
    /// The interface's name (`utun7`, `tun0`, `wg0`).
    fn name(&self) -> &str;
    /// The interface's MTU.
    fn mtu(&self) -> std::io::Result<u32>;
    /// Sets the interface's MTU.
    fn set_mtu(&self, mtu: u32) -> std::io::Result<()>;
    /// Reads one IP packet into `buf`, without the OS framing; returns its length.
    /// A frame the framing check refuses (see [`af::AfDrop`]) is an
    /// [`std::io::ErrorKind::InvalidData`] error carrying the reason: drop it, read on.
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one IP packet (no framing: the backend adds what its OS wants).
    fn send(&self, packet: &[u8]) -> std::io::Result<usize>;
    /// True once the interface is gone (deleted by the administrator): the daemon exits.
    fn is_deleted(&self) -> bool;
}
