//! The Linux TUN device of wireguard-rs.
//!
//! **Owns**: the `/dev/net/tun` file descriptor(s) of one layer-3 interface (`IFF_TUN |
//! IFF_NO_PI`, optionally `IFF_MULTI_QUEUE`), and the few link settings the daemon changes
//! itself: the MTU (wireguard-go sets 1420 at creation) and the `IFF_UP` flag. Packets
//! cross this crate as plain IPv4/IPv6 datagrams, one per `read`/`write`, with no
//! protocol-information header. [`Tun::create`] makes the interface (or attaches to a
//! persistent one the caller owns); [`Tun::from_fd`] adopts one a parent opened (as
//! wireguard-go's `WG_TUN_FD`); [`Tun::is_deleted`] tells the daemon when `ip link del`
//! removed it so it can exit; [`async_io::AsyncTun`] is the tokio wrapper.
//!
//! **Trusts**: the kernel, and the caller for the network namespace: the device lives in
//! the namespace `/dev/net/tun` was opened in, while the MTU and flag ioctls use a socket
//! of the *calling thread's* namespace, so call them from the namespace that created the
//! device. It does **not** trust inherited descriptors: [`Tun::from_fd`] checks that the fd
//! is the `/dev/net/tun` character device and that its flags are the ones this crate
//! speaks. Packet contents are not inspected at all: they are the router's business.
//!
//! **May depend on**: `nix` and `libc` (system calls), `tokio` (only `AsyncFd`, in
//! [`async_io`]), `thiserror`, `tracing`. No other wireguard-rs crate.
//!
//! **Linux only:** the Linux TUN driver (`/dev/net/tun` ioctls, virtio-net offloads); the
//! other systems' TUN devices belong to `wg-platform`. On every other OS this crate
//! compiles to an empty library (see the platform table in the README).

// This crate must talk to the kernel through ioctls on `struct ifreq`, which no safe
// wrapper covers, so it cannot `forbid` unsafe code like the rest of the workspace. It
// denies it instead: the only exceptions are the small ioctl and `ifreq` functions in
// `sys.rs` and `AsyncTun::new` (tokio's fd registration is an `unsafe fn`), each marked
// `#[allow(unsafe_code)]`, with a `// SAFETY:` comment on every `unsafe` block.
#![cfg(target_os = "linux")]
#![deny(unsafe_code)]

pub mod async_io;
mod sys;

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use libc::{c_int, c_short};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use crate::sys::IfReq;

pub use crate::async_io::AsyncTun;

/// Longest interface name the kernel accepts, in bytes (`IFNAMSIZ - 1`).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Smallest MTU a Linux TUN device accepts (`MIN_MTU` in the kernel's tun driver).
pub const MIN_MTU: u32 = 68;

/// Largest MTU a Linux TUN device accepts (`MAX_MTU` in the kernel's tun driver).
pub const MAX_MTU: u32 = 65535;

/// Most queues one multi-queue TUN device may have (`MAX_TAP_QUEUES` in the kernel).
pub const MAX_QUEUES: usize = 256;

/// Size of the `struct virtio_net_hdr` in front of every packet of a device with a
/// virtio-net header ([`Tun::create_offloaded`]).
pub const VNET_HDR_LEN: usize = 10;

/// The segmentation offloads a TUN device with a virtio-net header accepted
/// (`TUNSETOFFLOAD`): with them the kernel hands us TCP (and UDP) super-packets of up to
/// 64 KiB with a partial checksum, and takes such super-packets from us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    /// Checksum offload plus TCP segmentation offload for IPv4 and IPv6.
    pub tso: bool,
    /// UDP segmentation offload for IPv4 and IPv6 (Linux 6.2 and later).
    pub uso: bool,
}

/// The TUN clone device.
const TUN_PATH: &CStr = c"/dev/net/tun";

/// Major and minor number of `/dev/net/tun` (the misc device `TUN_MINOR`).
const TUN_DEV_MAJOR: u32 = 10;
const TUN_DEV_MINOR: u32 = 200;

/// Everything that can go wrong while setting up or managing a TUN device.
///
/// Each message says what to do about it; packet I/O ([`Tun::read`], [`Tun::write`])
/// reports `std::io::Error` instead, see [`is_interface_gone`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunError {
    /// The name cannot be an interface name.
    #[error(
        "interface name '{}' is invalid ({reason}): at most 15 bytes, no '/', whitespace or ':'",
        .name.escape_debug()
    )]
    InvalidName {
        /// The name as given.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The kernel refused for lack of `CAP_NET_ADMIN` (or ownership of a persistent device).
    #[error("{what} needs CAP_NET_ADMIN: run as root or grant the capability")]
    PermissionDenied {
        /// What was being attempted, e.g. "creating a TUN device".
        what: String,
    },
    /// `/dev/net/tun` does not exist or has no driver behind it.
    #[error(
        "/dev/net/tun is missing: load the tun module (modprobe tun), or create the node \
         (mkdir -p /dev/net && mknod /dev/net/tun c 10 200)"
    )]
    TunDeviceMissing,
    /// An interface of that name exists and we cannot attach to it.
    #[error(
        "interface {name} already exists and is not a TUN device we can attach to ({detail}): \
         delete it with 'ip link del {name}' or choose another name"
    )]
    AlreadyExists {
        /// The interface name.
        name: String,
        /// Why attaching failed.
        detail: &'static str,
    },
    /// The MTU is outside what a TUN device accepts.
    #[error(
        "MTU {mtu} is invalid ({detail}): use a value from 68 to 65535, at least 1280 if the tunnel carries IPv6"
    )]
    InvalidMtu {
        /// The MTU asked for.
        mtu: u32,
        /// Why it was refused.
        detail: &'static str,
    },
    /// A descriptor handed to [`Tun::from_fd`] is not a TUN device this crate can use.
    #[error(
        "the inherited file descriptor is not a usable TUN device ({reason}): pass a \
         /dev/net/tun descriptor attached with IFF_TUN | IFF_NO_PI (as for wireguard-go's WG_TUN_FD)"
    )]
    NotTun {
        /// What is wrong with it.
        reason: String,
    },
    /// The interface was deleted (for example by `ip link del`) while we held it.
    #[error(
        "interface {name} no longer exists (deleted, e.g. by 'ip link del'): restart the daemon to recreate it"
    )]
    InterfaceGone {
        /// The interface name.
        name: String,
    },
    /// [`Tun::clone_queue`] on a device created without `IFF_MULTI_QUEUE`.
    #[error(
        "interface {name} was created with a single queue: create it with Tun::create_multi_queue \
         to add queues"
    )]
    NotMultiQueue {
        /// The interface name.
        name: String,
    },
    /// A queue count of zero or above [`MAX_QUEUES`].
    #[error("a TUN device has from 1 to 256 queues, not {queues}: pick a count in that range")]
    InvalidQueueCount {
        /// The count asked for.
        queues: usize,
    },
    /// Any other system-call failure.
    #[error("{op} failed: {source}")]
    Io {
        /// The operation, e.g. "SIOCGIFMTU on wg0".
        op: String,
        /// The error from the kernel.
        #[source]
        source: io::Error,
    },
}

impl TunError {
    fn io(op: impl Into<String>, errno: Errno) -> TunError {
        TunError::Io {
            op: op.into(),
            source: io::Error::from(errno),
        }
    }
}

/// Checks `name` against the kernel's rules for interface names (`dev_valid_name`), plus
/// `%` (which the kernel would treat as a `%d` number template) and control characters.
///
/// # Errors
/// [`TunError::InvalidName`], with the broken rule.
pub fn validate_interface_name(name: &str) -> Result<(), TunError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are reserved")
    } else {
        name.bytes().find_map(|b| match b {
            b'/' => Some("it contains '/'"),
            b':' => Some("it contains ':'"),
            b'%' => Some("it contains '%', which the kernel treats as a number template"),
            // The kernel's isspace(): ASCII whitespace, vertical tab, and Latin-1 NBSP.
            b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0 => Some("it contains whitespace"),
            0x00..=0x1f | 0x7f => Some("it contains a control character"),
            _ => None,
        })
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(TunError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
    }
}

/// Whether a packet I/O error from [`Tun::read`], [`Tun::write`] or [`AsyncTun`] means the
/// interface has been deleted, so the daemon should shut down cleanly rather than retry.
///
/// Such errors have kind [`io::ErrorKind::NetworkDown`] and wrap an [`InterfaceGone`]. The
/// kernel reports a deleted interface as `EBADFD` on `read`, `write` and `TUNGETIFF`
/// (its `tun_get()` finds no device behind the file any more), and as `EFAULT` to a
/// blocking `read` that was already sleeping when the interface went away; a raw
/// `EBADFD` is recognised too.
pub fn is_interface_gone(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.is::<InterfaceGone>())
        || err.raw_os_error() == Some(libc::EBADFD)
}

/// The error inside the `io::Error` that packet I/O returns once the interface is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceGone {
    /// The errno the kernel returned (`EBADFD`, or `EFAULT` for an interrupted blocking read).
    pub errno: i32,
}

impl fmt::Display for InterfaceGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the TUN interface was deleted ({}): shut down or recreate it",
            Errno::from_raw(self.errno).desc()
        )
    }
}

impl std::error::Error for InterfaceGone {}

fn interface_gone(errno: Errno) -> io::Error {
    io::Error::new(
        io::ErrorKind::NetworkDown,
        InterfaceGone {
            errno: errno as i32,
        },
    )
}

/// A Linux TUN interface, one queue of it: the `/dev/net/tun` descriptor plus the name and
/// index of the interface it is attached to.
///
/// Dropping the last queue of a non-persistent device deletes the interface.
pub struct Tun {
    fd: OwnedFd,
    name: String,
    ifindex: u32,
    multi_queue: bool,
    vnet_hdr: bool,
    offloads: Offloads,
}

impl fmt::Debug for Tun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("ifindex", &self.ifindex)
            .field("fd", &self.fd.as_raw_fd())
            .field("multi_queue", &self.multi_queue)
            .field("vnet_hdr", &self.vnet_hdr)
            .field("offloads", &self.offloads)
            .finish()
    }
}

impl Tun {
    /// Creates TUN interface `name` (or attaches to a persistent one we own) with
    /// `IFF_TUN | IFF_NO_PI`, and sets its MTU to `mtu` (wireguard-go's default is 1420).
    /// The interface starts down; see [`Tun::set_up`]. The descriptor is blocking; see
    /// [`Tun::set_nonblocking`].
    ///
    /// # Errors
    /// [`TunError::InvalidName`], [`TunError::InvalidMtu`], [`TunError::TunDeviceMissing`],
    /// [`TunError::PermissionDenied`], [`TunError::AlreadyExists`] when a non-TUN interface,
    /// a TUN in use by another process or a multi-queue TUN has that name, or
    /// [`TunError::Io`].
    pub fn create(name: &str, mtu: u32) -> Result<Tun, TunError> {
        check_mtu(mtu)?;
        let tun = Tun::attach(name, 0)?;
        tun.set_mtu(mtu)?;
        tracing::debug!(name = %tun.name, ifindex = tun.ifindex, mtu, "created TUN interface");
        Ok(tun)
    }

    /// Like [`Tun::create`], but with a virtio-net header (`IFF_VNET_HDR`) in front of every
    /// packet read or written, and with every segmentation offload the kernel has: TCP
    /// (TSO, with checksum offload) and, where available, UDP (USO). Each is probed, and a
    /// kernel without one simply leaves it off ([`Tun::offloads`]); a reader of this device
    /// must then split super-packets itself and complete partial checksums (the `wg-offload`
    /// crate does).
    ///
    /// # Errors
    /// As [`Tun::create`].
    pub fn create_offloaded(name: &str, mtu: u32) -> Result<Tun, TunError> {
        check_mtu(mtu)?;
        let mut tun = Tun::attach(name, libc::IFF_VNET_HDR)?;
        tun.offloads = tun.enable_offloads()?;
        tun.set_mtu(mtu)?;
        tracing::debug!(
            name = %tun.name, ifindex = tun.ifindex, mtu, offloads = ?tun.offloads,
            "created TUN interface with a virtio-net header"
        );
        Ok(tun)
    }

    /// Asks for the largest set of offloads the kernel accepts (`EINVAL` means it lacks one).
    fn enable_offloads(&self) -> Result<Offloads, TunError> {
        let tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        let uso = libc::TUN_F_USO4 | libc::TUN_F_USO6;
        let attempts = [
            (
                tso | uso,
                Offloads {
                    tso: true,
                    uso: true,
                },
            ),
            (
                tso,
                Offloads {
                    tso: true,
                    uso: false,
                },
            ),
            (0, Offloads::default()),
        ];
        for (flags, offloads) in attempts {
            match sys::tun_set_offload(self.fd.as_fd(), flags) {
                Ok(()) => return Ok(offloads),
                Err(Errno::EINVAL) => continue,
                Err(e) => return Err(self.ctl_error("enabling offloads on", e)),
            }
        }
        Ok(Offloads::default())
    }

    /// Like [`Tun::create`] with `queues` queues: with `queues > 1` the device is created
    /// with `IFF_MULTI_QUEUE` and one [`Tun`] per queue is returned, queue 0 first (all
    /// share name and index). With `queues == 1` this is exactly [`Tun::create`].
    ///
    /// # Errors
    /// As [`Tun::create`], plus [`TunError::InvalidQueueCount`].
    pub fn create_multi_queue(name: &str, mtu: u32, queues: usize) -> Result<Vec<Tun>, TunError> {
        if queues == 0 || queues > MAX_QUEUES {
            return Err(TunError::InvalidQueueCount { queues });
        }
        if queues == 1 {
            return Ok(vec![Tun::create(name, mtu)?]);
        }
        check_mtu(mtu)?;
        let first = Tun::attach(name, libc::IFF_MULTI_QUEUE)?;
        first.set_mtu(mtu)?;
        let mut all = Vec::with_capacity(queues);
        for _ in 1..queues {
            all.push(first.clone_queue()?);
        }
        all.insert(0, first);
        tracing::debug!(name, queues, mtu, "created multi-queue TUN interface");
        Ok(all)
    }

    /// Opens one more queue of this multi-queue device. Call it from the network namespace
    /// the device lives in (otherwise the kernel would create a new device there).
    ///
    /// # Errors
    /// [`TunError::NotMultiQueue`] if the device was created with a single queue; the
    /// errors of [`Tun::create`] otherwise (`EINVAL` past [`MAX_QUEUES`] shows as `Io`).
    pub fn clone_queue(&self) -> Result<Tun, TunError> {
        if !self.multi_queue {
            return Err(TunError::NotMultiQueue {
                name: self.name.clone(),
            });
        }
        let queue = Tun::attach(&self.name, libc::IFF_MULTI_QUEUE)?;
        if queue.ifindex != self.ifindex {
            return Err(TunError::InterfaceGone {
                name: self.name.clone(),
            });
        }
        Ok(queue)
    }

    /// Opens `/dev/net/tun` and attaches it to `name` with our flags plus `extra_flags`
    /// (`IFF_MULTI_QUEUE`, `IFF_VNET_HDR`).
    fn attach(name: &str, extra_flags: c_int) -> Result<Tun, TunError> {
        validate_interface_name(name)?;
        let fd = open_tun_device()?;
        let flags = libc::IFF_TUN | libc::IFF_NO_PI | extra_flags;
        let mut req = IfReq::new(name);
        req.set_flags(flags_to_short(flags));
        sys::tun_set_iff(fd.as_fd(), &mut req).map_err(|e| setiff_error(name, e))?;
        // We refuse '%' templates, so the kernel keeps the name we asked for.
        let ifindex = ifindex_of(name)?;
        Ok(Tun {
            fd,
            name: name.to_owned(),
            ifindex,
            multi_queue: flags & libc::IFF_MULTI_QUEUE != 0,
            vnet_hdr: flags & libc::IFF_VNET_HDR != 0,
            offloads: Offloads::default(),
        })
    }

    /// Adopts an inherited TUN descriptor (wireguard-go's `WG_TUN_FD`): checks that it is
    /// the `/dev/net/tun` character device, reads the interface name with `TUNGETIFF`, and
    /// checks the flags: `IFF_TUN` and `IFF_NO_PI` set, `IFF_TAP` clear, and with
    /// `IFF_VNET_HDR` a header of [`VNET_HDR_LEN`] bytes. The blocking mode is left as it is;
    /// the offloads cannot be read back, so [`Tun::offloads`] reports none. The index is looked up in the calling thread's
    /// network namespace, which must be the device's.
    ///
    /// # Errors
    /// [`TunError::NotTun`] for anything else; [`TunError::Io`] if the name cannot be
    /// resolved to an index here.
    pub fn from_fd(fd: OwnedFd) -> Result<Tun, TunError> {
        if !is_tun_char_device(&fd)? {
            return Err(TunError::NotTun {
                reason: "it is not the /dev/net/tun character device".into(),
            });
        }
        let req = match sys::tun_get_iff(fd.as_fd()) {
            Ok(req) => req,
            Err(Errno::EBADFD) => {
                return Err(TunError::NotTun {
                    reason: "it is not attached to an interface (TUNSETIFF never called, or the interface was deleted)"
                        .into(),
                });
            }
            Err(e) => return Err(TunError::io("TUNGETIFF on the inherited fd", e)),
        };
        let flags = flags_from_short(req.flags());
        let problem = if flags & libc::IFF_TUN == 0 || flags & libc::IFF_TAP != 0 {
            Some("it is a TAP device, not IFF_TUN")
        } else if flags & libc::IFF_NO_PI == 0 {
            Some("IFF_NO_PI is not set, so packets would carry a protocol-information header")
        } else if flags & libc::IFF_VNET_HDR != 0
            && sys::tun_get_vnet_hdr_size(fd.as_fd()).ok() != c_int::try_from(VNET_HDR_LEN).ok()
        {
            Some("IFF_VNET_HDR is set with a header size other than 10 bytes")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(TunError::NotTun {
                reason: format!("{problem} (flags {flags:#x})"),
            });
        }
        let name = String::from_utf8(req.name_bytes()).map_err(|_| TunError::NotTun {
            reason: "its interface name is not UTF-8".into(),
        })?;
        let ifindex = ifindex_of(&name)?;
        tracing::debug!(%name, ifindex, "adopted TUN interface from an inherited fd");
        Ok(Tun {
            fd,
            name,
            ifindex,
            multi_queue: flags & libc::IFF_MULTI_QUEUE != 0,
            vnet_hdr: flags & libc::IFF_VNET_HDR != 0,
            offloads: Offloads::default(),
        })
    }

    /// Whether every packet read or written starts with a [`VNET_HDR_LEN`]-byte
    /// `struct virtio_net_hdr` (`IFF_VNET_HDR`).
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The offloads enabled by [`Tun::create_offloaded`] (none for other devices).
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index, as it was when the device was created or adopted.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Whether the device was created with `IFF_MULTI_QUEUE` (see [`Tun::clone_queue`]).
    pub fn is_multi_queue(&self) -> bool {
        self.multi_queue
    }

    /// The interface's current MTU (`SIOCGIFMTU`).
    ///
    /// # Errors
    /// [`TunError::InterfaceGone`] once the interface is deleted; [`TunError::Io`].
    pub fn mtu(&self) -> Result<u32, TunError> {
        let sock = control_socket()?;
        let mut req = IfReq::new(&self.name);
        sys::get_mtu(sock.as_fd(), &mut req)
            .map_err(|e| self.ctl_error("reading the MTU of", e))?;
        u32::try_from(req.mtu())
            .map_err(|_| TunError::io(format!("SIOCGIFMTU on {}", self.name), Errno::ERANGE))
    }

    /// Sets the interface's MTU (`SIOCSIFMTU`); needs `CAP_NET_ADMIN`.
    ///
    /// # Errors
    /// [`TunError::InvalidMtu`] outside [`MIN_MTU`]..=[`MAX_MTU`] or if the kernel refuses;
    /// [`TunError::PermissionDenied`], [`TunError::InterfaceGone`], [`TunError::Io`].
    pub fn set_mtu(&self, mtu: u32) -> Result<(), TunError> {
        let value = check_mtu(mtu)?;
        let sock = control_socket()?;
        let mut req = IfReq::new(&self.name);
        req.set_mtu(value);
        match sys::set_mtu(sock.as_fd(), &req) {
            Ok(()) => Ok(()),
            Err(Errno::EINVAL) => Err(TunError::InvalidMtu {
                mtu,
                detail: "the kernel refused it",
            }),
            Err(e) => Err(self.ctl_error("setting the MTU of", e)),
        }
    }

    /// Brings the link up or down (`IFF_UP` through `SIOCGIFFLAGS`/`SIOCSIFFLAGS`, as
    /// `ip link set NAME up|down`); needs `CAP_NET_ADMIN`. Writing packets into a TUN
    /// whose link is down fails with `EIO`.
    ///
    /// # Errors
    /// [`TunError::PermissionDenied`], [`TunError::InterfaceGone`], [`TunError::Io`].
    pub fn set_up(&self, up: bool) -> Result<(), TunError> {
        let sock = control_socket()?;
        let mut req = IfReq::new(&self.name);
        sys::get_flags(sock.as_fd(), &mut req)
            .map_err(|e| self.ctl_error("reading the link flags of", e))?;
        let flags = flags_from_short(req.flags());
        let flags = if up {
            flags | libc::IFF_UP
        } else {
            flags & !libc::IFF_UP
        };
        req.set_flags(flags_to_short(flags));
        sys::set_flags(sock.as_fd(), &req)
            .map_err(|e| self.ctl_error("setting the link flags of", e))
    }

    /// Switches the descriptor between blocking and non-blocking mode (`O_NONBLOCK`).
    /// [`AsyncTun::new`] does this itself.
    ///
    /// # Errors
    /// [`TunError::Io`] if `fcntl` fails.
    pub fn set_nonblocking(&self, on: bool) -> Result<(), TunError> {
        let current = fcntl(&self.fd, FcntlArg::F_GETFL)
            .map_err(|e| TunError::io("fcntl(F_GETFL) on the TUN fd", e))?;
        let mut flags = OFlag::from_bits_retain(current);
        flags.set(OFlag::O_NONBLOCK, on);
        fcntl(&self.fd, FcntlArg::F_SETFL(flags))
            .map_err(|e| TunError::io("fcntl(F_SETFL) on the TUN fd", e))?;
        Ok(())
    }

    /// Reads one packet (an IPv4 or IPv6 datagram) into `buf` and returns its length.
    /// A packet longer than `buf` is truncated, so pass at least MTU bytes (65535 is
    /// always enough). Retries on `EINTR`.
    ///
    /// # Errors
    /// [`io::ErrorKind::WouldBlock`] when non-blocking and no packet is queued; an error for
    /// which [`is_interface_gone`] is true once the interface is deleted; other OS errors.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::read(&self.fd, buf) {
                Ok(n) => return Ok(n),
                Err(Errno::EINTR) => continue,
                // EFAULT: a read that was asleep when the interface was deleted (our
                // buffer is a valid slice, so the kernel has no other reason to say it).
                Err(e @ (Errno::EBADFD | Errno::EFAULT)) => return Err(interface_gone(e)),
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    }

    /// Writes one packet, which must be a whole IPv4 or IPv6 datagram (the kernel looks at
    /// the version nibble and answers `EINVAL` otherwise), and returns its length. Retries
    /// on `EINTR`.
    ///
    /// # Errors
    /// [`io::ErrorKind::WouldBlock`] when non-blocking and the device cannot take it; `EIO`
    /// while the link is down; an error for which [`is_interface_gone`] is true once the
    /// interface is deleted; other OS errors.
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::write(&self.fd, packet) {
                Ok(n) => return Ok(n),
                Err(Errno::EINTR) => continue,
                Err(e @ Errno::EBADFD) => return Err(interface_gone(e)),
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    }

    /// Whether the interface is gone (deleted, e.g. by `ip link del`): the daemon must then
    /// exit. Asks the kernel through our own descriptor (`TUNGETIFF` fails with `EBADFD`
    /// once the device behind it is unregistered), so unlike a name lookup
    /// (`if_nametoindex`, `/sys/class/net/NAME/ifindex`) it works from any network
    /// namespace and cannot be fooled by a new interface that reuses the name.
    pub fn is_deleted(&self) -> bool {
        matches!(sys::tun_get_iff(self.fd.as_fd()), Err(Errno::EBADFD))
    }

    /// Gives up the descriptor (for passing to another process); the interface lives on as
    /// long as some descriptor attached to it stays open (or it is persistent).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    fn ctl_error(&self, what: &str, errno: Errno) -> TunError {
        match errno {
            Errno::ENODEV | Errno::ENXIO => TunError::InterfaceGone {
                name: self.name.clone(),
            },
            Errno::EPERM | Errno::EACCES => TunError::PermissionDenied {
                what: format!("{what} {}", self.name),
            },
            e => TunError::io(format!("{what} {}", self.name), e),
        }
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<Tun> for OwnedFd {
    fn from(tun: Tun) -> OwnedFd {
        tun.into_fd()
    }
}

fn open_tun_device() -> Result<OwnedFd, TunError> {
    let path = TUN_PATH.to_string_lossy();
    let fd = match nix::fcntl::open(
        TUN_PATH,
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENODEV | Errno::ENXIO) => {
            return Err(TunError::TunDeviceMissing);
        }
        Err(Errno::EACCES | Errno::EPERM) => {
            return Err(TunError::PermissionDenied {
                what: format!("opening {path}"),
            });
        }
        Err(e) => return Err(TunError::io(format!("opening {path}"), e)),
    };
    // The TUN ioctls are only sound on the TUN driver: make sure the path really is it.
    if !is_tun_char_device(&fd)? {
        return Err(TunError::io(
            format!(
                "checking {path} (it must be the character device 10:200; recreate it with mknod)"
            ),
            Errno::ENODEV,
        ));
    }
    Ok(fd)
}

/// Whether `fd` is the TUN clone device (character device 10:200), so that the TUN ioctls
/// mean what we think they mean.
fn is_tun_char_device(fd: &OwnedFd) -> Result<bool, TunError> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| TunError::io("fstat on the TUN fd", e))?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFCHR
        && libc::major(st.st_rdev) == TUN_DEV_MAJOR
        && libc::minor(st.st_rdev) == TUN_DEV_MINOR)
}

/// Maps a `TUNSETIFF` failure to the error that tells the user what to do.
fn setiff_error(name: &str, errno: Errno) -> TunError {
    let exists = ifindex_of(name).is_ok();
    match errno {
        Errno::EBUSY => TunError::AlreadyExists {
            name: name.to_owned(),
            detail: "a TUN device of that name is in use by another process",
        },
        Errno::EEXIST => TunError::AlreadyExists {
            name: name.to_owned(),
            detail: "it was created concurrently by someone else",
        },
        Errno::EINVAL if exists => TunError::AlreadyExists {
            name: name.to_owned(),
            detail: "it is not a TUN device, or its multi-queue setting differs from ours",
        },
        Errno::EPERM | Errno::EACCES if exists => TunError::PermissionDenied {
            what: format!(
                "attaching to the existing TUN device {name}, which belongs to another user,"
            ),
        },
        Errno::EPERM | Errno::EACCES => TunError::PermissionDenied {
            what: "creating a TUN device".into(),
        },
        e => TunError::io(format!("TUNSETIFF for {name}"), e),
    }
}

/// The index of interface `name` in the calling thread's network namespace.
fn ifindex_of(name: &str) -> Result<u32, TunError> {
    nix::net::if_::if_nametoindex(name)
        .map_err(|e| TunError::io(format!("looking up the index of interface {name}"), e))
}

/// A throwaway `AF_INET` datagram socket for the `SIOC*IF*` ioctls.
fn control_socket() -> Result<OwnedFd, TunError> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| TunError::io("creating an AF_INET control socket", e))
}

/// Range-checks an MTU and converts it for `ifreq`.
fn check_mtu(mtu: u32) -> Result<c_int, TunError> {
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(TunError::InvalidMtu {
            mtu,
            detail: "out of range for a TUN device",
        });
    }
    c_int::try_from(mtu).map_err(|_| TunError::InvalidMtu {
        mtu,
        detail: "out of range for a TUN device",
    })
}

/// `ifr_flags` is a C `short` holding 16 flag bits; reinterpret them, never sign-extend.
fn flags_from_short(flags: c_short) -> c_int {
    c_int::from(flags as u16)
}

/// The inverse of [`flags_from_short`]: keep the low 16 bits (all `IFF_*` and TUN flags fit).
fn flags_to_short(flags: c_int) -> c_short {
    (flags & 0xffff) as u16 as c_short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for name in ["wg0", "a", "wireguard-rs-01", "tun_x.y", "123456789012345"] {
            assert!(validate_interface_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn sixteen_bytes_is_too_long() {
        let name = "1234567890123456";
        assert_eq!(name.len(), 16);
        let err = validate_interface_name(name).unwrap_err();
        assert!(matches!(err, TunError::InvalidName { .. }));
        assert!(err.to_string().contains("at most 15 bytes"), "{err}");
        // 15 bytes but multi-byte characters: the limit is in bytes.
        assert!(validate_interface_name("ééééééé").is_ok()); // 14 bytes
        assert!(validate_interface_name("éééééééé").is_err()); // 16 bytes
    }

    #[test]
    fn invalid_names() {
        for name in [
            "", ".", "..", "wg/0", "wg:0", "wg 0", "wg\t0", "wg\n0", "wg\u{b}0", "wg%d", "wg\0",
            "wg\u{7f}",
            // U+00E0 is C3 A0 in UTF-8; the kernel's isspace() treats byte 0xA0 as space.
            "wgà",
        ] {
            let err = validate_interface_name(name).unwrap_err();
            let TunError::InvalidName { name: n, .. } = &err else {
                panic!("wrong error for {name:?}: {err}");
            };
            assert_eq!(n, name);
        }
    }

    #[test]
    fn name_error_message_is_actionable_and_escaped() {
        let err = validate_interface_name("x/y").unwrap_err();
        assert_eq!(
            err.to_string(),
            "interface name 'x/y' is invalid (it contains '/'): at most 15 bytes, no '/', whitespace or ':'"
        );
        let err = validate_interface_name("a\nb").unwrap_err();
        assert!(err.to_string().contains("'a\\nb'"), "{err}");
    }

    #[test]
    fn mtu_range() {
        assert!(check_mtu(67).is_err());
        assert_eq!(check_mtu(68).unwrap(), 68);
        assert_eq!(check_mtu(1420).unwrap(), 1420);
        assert_eq!(check_mtu(65535).unwrap(), 65535);
        assert!(check_mtu(65536).is_err());
        assert!(check_mtu(u32::MAX).is_err());
    }

    #[test]
    fn flags_do_not_sign_extend() {
        let all = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | libc::IFF_TUN_EXCL;
        assert_eq!(flags_from_short(flags_to_short(all)), all);
        assert!(flags_to_short(all) < 0); // IFF_TUN_EXCL is the sign bit of a short
    }

    #[test]
    fn interface_gone_is_recognised() {
        let e = interface_gone(Errno::EBADFD);
        assert_eq!(e.kind(), io::ErrorKind::NetworkDown);
        assert!(is_interface_gone(&e));
        assert!(e.to_string().contains("deleted"), "{e}");
        assert!(is_interface_gone(&io::Error::from_raw_os_error(
            libc::EBADFD
        )));
        assert!(!is_interface_gone(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(!is_interface_gone(&io::Error::from(
            io::ErrorKind::WouldBlock
        )));
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let e = TunError::PermissionDenied {
            what: "creating a TUN device".into(),
        };
        assert_eq!(
            e.to_string(),
            "creating a TUN device needs CAP_NET_ADMIN: run as root or grant the capability"
        );
        assert!(
            TunError::TunDeviceMissing
                .to_string()
                .starts_with("/dev/net/tun is missing: load the tun module")
        );
        let e = TunError::AlreadyExists {
            name: "wg0".into(),
            detail: "x",
        };
        assert!(
            e.to_string().starts_with(
                "interface wg0 already exists and is not a TUN device we can attach to"
            )
        );
    }
}
