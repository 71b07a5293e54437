//! The sandbox policies of the Unix-like OSes other than Linux, per [`Role`], as data: the
//! macOS sandbox profile (SBPL) and resource limits, the FreeBSD Capsicum rights of each
//! descriptor a worker holds, and OpenBSD's pledge promises and unveil lists. The backends
//! (`crate::macos`, `crate::bsd`, each compiled only for its OS) only apply what is written
//! here, so the security properties are asserted by tests on every host.
//!
//! The shape follows OpenSSH's portable sandboxes (facts only): deny by default, enter the
//! sandbox after the worker holds every descriptor it will use, then add resource limits
//! (no file growth, no new processes) as the rlimit sandbox does.
//!
//! One finding shapes the FreeBSD table: in Capsicum capability mode the kernel refuses
//! `sendto`/`sendmsg` with a destination address (`ECAPMODE`), and a WireGuard data plane
//! sends from one unconnected UDP socket to every peer's endpoint. So datad limits the
//! rights of each descriptor (which holds without capability mode) but does not call
//! `cap_enter` until its UDP path uses connected sockets; keyd, which never touches the
//! network, enters capability mode. See [`capsicum_mode`].
#![forbid(unsafe_code)]

use crate::Role;

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The spawner's profile names the data-plane program it may start, and none was given.
    #[error(
        "the spawner's sandbox needs the path of the data-plane program (wireguard-rs-datad) it starts"
    )]
    MissingHelperPath,
    /// A path that cannot be written into a policy as is.
    #[error(
        "helper path {0:?} must be absolute and must not contain quotes, backslashes or control characters: install wireguard-rs under a plain path"
    )]
    UnsafePath(String),
}

/// A path accepted into a profile: absolute, and nothing that could end an SBPL string or
/// change its meaning.
fn check_path(path: &str) -> Result<&str, PolicyError> {
    let plain = path.starts_with('/')
        && !path
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control());
    if plain {
        Ok(path)
    } else {
        Err(PolicyError::UnsafePath(path.to_owned()))
    }
}

// ---------------------------------------------------------------------------------------
// macOS: the sandbox profile and resource limits.
// ---------------------------------------------------------------------------------------

/// Rules of every role: deny everything not allowed below; signals only to itself
/// (`abort`); sysctl reads (the Rust runtime asks for the CPU count and page size).
const SBPL_COMMON: &[&str] = &[
    "(version 1)",
    "(deny default)",
    "(allow signal (target self))",
    "(allow sysctl-read)",
];

/// keyd: nothing more. Reading and writing the descriptors it was handed (the IPC
/// channels, the UAPI listener and its accepted connections) is not a sandbox operation;
/// opening files, creating sockets, binding, connecting and exec are. To verify on a Mac:
/// whether `accept` on the held UAPI listener is checked as `network-inbound`; if so, keyd
/// gains one rule for that socket's path, nothing wider.
const SBPL_KEYD: &[&str] = &[];

/// datad: UDP to and from any peer on the sockets it was handed (macOS checks the
/// destination of `sendto` on an unconnected socket, and inbound datagrams). No files.
/// To verify on a Mac: that reading and writing the held utun control socket needs no rule.
const SBPL_DATAD: &[&str] = &[
    "(allow network-outbound (remote ip \"*:*\"))",
    "(allow network-inbound (local ip \"*:*\"))",
];

/// Directories the dynamic loader reads when the spawner starts datad.
const SBPL_LOADER_DIRS: &[&str] = &[
    "/usr/lib",
    "/System/Library",
    "/System/Volumes/Preboot/Cryptexes/OS",
];

/// The SBPL profile of `role` for `sandbox_init`. The spawner's names the one program it
/// may start, `datad_path` (ignored for the other roles). The daemon does not enter the
/// spawner's: macOS allows one `sandbox_init` per process and children inherit the
/// sandbox, so a sandboxed spawner would start data planes that die entering their own
/// (`forbidden-sandbox-reinit`); `wg-sandbox` confines the spawner by user and limits.
pub fn macos_profile(role: Role, datad_path: Option<&str>) -> Result<String, PolicyError> {
    let mut rules: Vec<String> = SBPL_COMMON.iter().map(|r| (*r).to_owned()).collect();
    match role {
        Role::Keyd => rules.extend(SBPL_KEYD.iter().map(|r| (*r).to_owned())),
        Role::Datad => rules.extend(SBPL_DATAD.iter().map(|r| (*r).to_owned())),
        Role::Spawner => {
            let path = check_path(datad_path.ok_or(PolicyError::MissingHelperPath)?)?;
            rules.push("(allow process-fork)".to_owned());
            rules.push(format!("(allow process-exec (literal \"{path}\"))"));
            let dirs: String = SBPL_LOADER_DIRS
                .iter()
                .map(|d| format!(" (subpath \"{d}\")"))
                .collect();
            rules.push(format!("(allow file-read* (literal \"{path}\"){dirs})"));
            // To kill the data plane it started (SIGKILL), which runs as its uid.
            rules.push("(allow signal (target children))".to_owned());
        }
    }
    let mut profile = rules.join("\n");
    profile.push('\n');
    Ok(profile)
}

/// Resource limits set after the sandbox profile, as OpenSSH's rlimit sandbox does. Each is
/// applied as both the soft and the hard limit, so it cannot be raised again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rlimits {
    /// `RLIMIT_FSIZE`: 0, no file can grow. (A worker's standard error must therefore be a
    /// pipe or socket, never a regular file: writing one would raise `SIGXFSZ`.)
    pub fsize: u64,
    /// `RLIMIT_NOFILE`: the descriptors a worker may hold. Not 0 as in OpenSSH: keyd
    /// accepts UAPI connections and datad receives new sockets when the port changes.
    pub nofile: u64,
    /// `RLIMIT_NPROC`: `Some(0)` forbids `fork`; `None` leaves it (the spawner forks).
    pub nproc: Option<u64>,
}

/// The resource limits of `role`.
pub const fn rlimits(role: Role) -> Rlimits {
    match role {
        Role::Keyd => Rlimits {
            fsize: 0,
            nofile: 64,
            nproc: Some(0),
        },
        Role::Datad => Rlimits {
            fsize: 0,
            nofile: 64,
            nproc: Some(0),
        },
        Role::Spawner => Rlimits {
            fsize: 0,
            nofile: 64,
            nproc: None,
        },
    }
}

// ---------------------------------------------------------------------------------------
// FreeBSD: Capsicum rights per descriptor.
// ---------------------------------------------------------------------------------------

/// A Capsicum right as `<sys/capsicum.h>` encodes it: the array index in bits 57+, the
/// right's bit below.
const fn cap_right(index: u32, bit: u64) -> u64 {
    (1u64 << (57 + index)) | bit
}

/// Capsicum rights (FreeBSD `<sys/capsicum.h>`), the few the tables below use.
pub mod cap {
    use super::cap_right;

    /// `CAP_READ` (also `CAP_RECV`): `read`, `recv*`.
    pub const READ: u64 = cap_right(0, 0x1);
    /// `CAP_WRITE` (also `CAP_SEND`): `write`, `send*`.
    pub const WRITE: u64 = cap_right(0, 0x2);
    /// `CAP_FSTAT`.
    pub const FSTAT: u64 = cap_right(0, 0x80000);
    /// `CAP_ACCEPT`: `accept` on a listening socket.
    pub const ACCEPT: u64 = cap_right(0, 0x2000_0000);
    /// `CAP_BIND`.
    pub const BIND: u64 = cap_right(0, 0x4000_0000);
    /// `CAP_CONNECT`: `connect`, and `sendto` with a destination address.
    pub const CONNECT: u64 = cap_right(0, 0x8000_0000);
    /// `CAP_GETSOCKNAME`.
    pub const GETSOCKNAME: u64 = cap_right(0, 0x2_0000_0000);
    /// `CAP_GETSOCKOPT`: `getsockopt`, and so `getpeereid`.
    pub const GETSOCKOPT: u64 = cap_right(0, 0x4_0000_0000);
    /// `CAP_LISTEN`.
    pub const LISTEN: u64 = cap_right(0, 0x8_0000_0000);
    /// `CAP_SETSOCKOPT`.
    pub const SETSOCKOPT: u64 = cap_right(0, 0x20_0000_0000);
    /// `CAP_LOOKUP`: path lookups relative to a directory descriptor.
    pub const LOOKUP: u64 = cap_right(0, 0x400);
    /// `CAP_FCNTL`.
    pub const FCNTL: u64 = cap_right(0, 0x8000);
    /// `CAP_EVENT`: `poll`, `select`, `kevent` on it.
    pub const EVENT: u64 = cap_right(1, 0x20);
    /// `CAP_IOCTL`.
    pub const IOCTL: u64 = cap_right(1, 0x80);
}

/// The kinds of descriptor a worker is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DescriptorKind {
    /// The tun(4) device: packets in and out.
    Tun,
    /// A UDP socket, bound by the monitor.
    Udp,
    /// A channel to another process of the daemon (descriptors travel on it too:
    /// `SCM_RIGHTS` needs only the send and receive rights).
    IpcChannel,
    /// The UAPI listening socket (keyd accepts `wg`'s connections on it).
    UapiListener,
}

/// The Capsicum rights of a descriptor of `kind`. It must be non-blocking before the
/// rights are limited (no `CAP_FCNTL`, no `CAP_IOCTL`: the MTU and deletion checks are the
/// monitor's).
pub const fn capsicum_rights(kind: DescriptorKind) -> &'static [u64] {
    match kind {
        DescriptorKind::Tun => &[cap::READ, cap::WRITE, cap::EVENT],
        // `getsockopt`: the peer's credentials (keyd checks the monitor's uid with
        // `getpeereid`, which is `getsockopt(LOCAL_PEERCRED)`) and a channel's `SO_TYPE`.
        DescriptorKind::IpcChannel => &[cap::READ, cap::WRITE, cap::EVENT, cap::GETSOCKOPT],
        // CAP_CONNECT because the kernel asks for it on `sendto` with an address; the
        // socket is already bound, and no CAP_BIND or CAP_SETSOCKOPT is given.
        DescriptorKind::Udp => &[cap::READ, cap::WRITE, cap::EVENT, cap::CONNECT],
        // A socket `accept` returns has the listener's rights (FreeBSD's `accept(2)` gives
        // the new descriptor the listening one's capability rights), so these are also
        // the rights of every `wg` connection: read the request, write the answer, ask
        // the client's credentials (`getpeereid` is `getsockopt(LOCAL_PEERCRED)`).
        DescriptorKind::UapiListener => &[
            cap::ACCEPT,
            cap::EVENT,
            cap::READ,
            cap::WRITE,
            cap::GETSOCKOPT,
        ],
    }
}

/// The descriptors `role` holds when it enters its sandbox.
pub const fn capsicum_descriptors(role: Role) -> &'static [DescriptorKind] {
    match role {
        Role::Keyd => &[DescriptorKind::IpcChannel, DescriptorKind::UapiListener],
        Role::Datad => &[
            DescriptorKind::IpcChannel,
            DescriptorKind::Tun,
            DescriptorKind::Udp,
        ],
        Role::Spawner => &[DescriptorKind::IpcChannel],
    }
}

/// Whether a role enters Capsicum capability mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapabilityMode {
    /// `cap_enter` after the rights are limited: no global namespaces from then on.
    Enter,
    /// Rights limited per descriptor only; the reason says why not more.
    RightsOnly(&'static str),
}

/// Whether `role` calls `cap_enter` after limiting its descriptors.
pub const fn capsicum_mode(role: Role) -> CapabilityMode {
    match role {
        Role::Keyd => CapabilityMode::Enter,
        Role::Datad => CapabilityMode::RightsOnly(
            "capability mode refuses sendto with a destination address (ECAPMODE), and datad sends to every peer from one unconnected UDP socket",
        ),
        Role::Spawner => CapabilityMode::RightsOnly(
            "the spawner must exec the data-plane program by path, which capability mode forbids",
        ),
    }
}

/// What a worker learns about one of its own descriptors from the kernel (`fstat`,
/// `SO_TYPE`, `SO_ACCEPTCONN`, the family of `getsockname`), to find its kind before it
/// limits the descriptor's rights ([`descriptor_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DescriptorFacts {
    /// A character device (tun(4) is one).
    CharDevice,
    /// A socket.
    Socket {
        /// Its type.
        kind: SocketKind,
        /// Its address family.
        family: SocketFamily,
        /// Whether `listen` was called on it.
        listening: bool,
    },
    /// Anything else (a regular file, a pipe, the runtime's kqueue).
    Other,
}

/// A socket's type, as far as the kinds care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketKind {
    /// `SOCK_STREAM`.
    Stream,
    /// `SOCK_DGRAM`.
    Datagram,
    /// `SOCK_SEQPACKET`.
    SeqPacket,
    /// Any other type.
    Other,
}

/// A socket's address family, as far as the kinds care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketFamily {
    /// `AF_UNIX`.
    Unix,
    /// `AF_INET` or `AF_INET6`.
    Inet,
    /// Any other family.
    Other,
}

/// The kind of a descriptor with these `facts`, or `None` for one that is none of the
/// kinds a worker is handed (standard streams, the runtime's own kqueue): the sandbox
/// leaves those as they are and relies on capability mode and the OS profile for them.
/// A Unix socket that listens is the UAPI listener, any other Unix stream or seqpacket
/// socket an IPC channel (macOS and the daemon's stream transport use `SOCK_STREAM`), an
/// Internet datagram socket a UDP socket, a character device the TUN.
pub const fn descriptor_kind(facts: DescriptorFacts) -> Option<DescriptorKind> {
    match facts {
        DescriptorFacts::CharDevice => Some(DescriptorKind::Tun),
        DescriptorFacts::Socket {
            kind: SocketKind::Datagram,
            family: SocketFamily::Inet,
            ..
        } => Some(DescriptorKind::Udp),
        DescriptorFacts::Socket {
            kind: SocketKind::Stream | SocketKind::SeqPacket,
            family: SocketFamily::Unix,
            listening,
        } => Some(if listening {
            DescriptorKind::UapiListener
        } else {
            DescriptorKind::IpcChannel
        }),
        DescriptorFacts::Socket { .. } | DescriptorFacts::Other => None,
    }
}

// ---------------------------------------------------------------------------------------
// OpenBSD: pledge and unveil.
// ---------------------------------------------------------------------------------------

/// The pledge(2) promises of `role`.
/// - keyd: `stdio` (its descriptors, memory, time), `unix` (accepting UAPI connections and
///   reading the client's credentials);
/// - datad: `stdio`, `inet` (sending to peers' addresses), `recvfd` (new sockets when the
///   port changes);
/// - spawner: `stdio`, `rpath` (the loader reads the program), `proc` and `exec` (starting
///   and killing the data plane).
pub const fn pledge_promises(role: Role) -> &'static str {
    match role {
        Role::Keyd => "stdio unix",
        Role::Datad => "stdio inet recvfd",
        Role::Spawner => "stdio rpath proc exec",
    }
}

/// The unveil(2) list of `role` (path, permissions), locked afterwards: nothing for keyd and
/// datad (no file is visible); for the spawner the program it starts and the loader.
pub fn unveil_paths(
    role: Role,
    datad_path: Option<&str>,
) -> Result<Vec<(String, &'static str)>, PolicyError> {
    match role {
        Role::Keyd | Role::Datad => Ok(Vec::new()),
        Role::Spawner => {
            let path = check_path(datad_path.ok_or(PolicyError::MissingHelperPath)?)?;
            Ok(vec![
                (path.to_owned(), "rx"),
                ("/usr/lib".to_owned(), "r"),
                ("/usr/libexec/ld.so".to_owned(), "r"),
            ])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [Role; 3] = [Role::Keyd, Role::Datad, Role::Spawner];
    const DATAD: &str = "/usr/local/libexec/wireguard-rs/wireguard-rs-datad";

    fn profile(role: Role) -> String {
        macos_profile(role, Some(DATAD)).unwrap()
    }

    /// The `(allow ...)` rules of a profile.
    fn allows(profile: &str) -> Vec<&str> {
        profile
            .lines()
            .filter(|l| l.starts_with("(allow "))
            .collect()
    }

    #[test]
    fn descriptors_are_classified_by_what_the_kernel_says_they_are() {
        let socket = |kind, family, listening| DescriptorFacts::Socket {
            kind,
            family,
            listening,
        };
        use SocketFamily::{Inet, Unix};
        use SocketKind::{Datagram, SeqPacket, Stream};
        assert_eq!(
            descriptor_kind(DescriptorFacts::CharDevice),
            Some(DescriptorKind::Tun)
        );
        assert_eq!(
            descriptor_kind(socket(Datagram, Inet, false)),
            Some(DescriptorKind::Udp)
        );
        assert_eq!(
            descriptor_kind(socket(Stream, Unix, true)),
            Some(DescriptorKind::UapiListener)
        );
        for kind in [Stream, SeqPacket] {
            assert_eq!(
                descriptor_kind(socket(kind, Unix, false)),
                Some(DescriptorKind::IpcChannel)
            );
        }
        // Nothing a worker is handed: left to capability mode and the profile.
        for facts in [
            socket(Stream, Inet, false),
            socket(Datagram, Unix, false),
            socket(SocketKind::Other, Unix, false),
            socket(Datagram, SocketFamily::Other, false),
            DescriptorFacts::Other,
        ] {
            assert_eq!(descriptor_kind(facts), None, "{facts:?}");
        }
        // keyd's descriptors are all kinds its table allows; a UDP socket would not be.
        for facts in [socket(SeqPacket, Unix, false), socket(Stream, Unix, true)] {
            let kind = descriptor_kind(facts).expect("a kind");
            assert!(capsicum_descriptors(Role::Keyd).contains(&kind));
        }
        assert!(!capsicum_descriptors(Role::Keyd).contains(&DescriptorKind::Udp));
    }

    #[test]
    fn every_profile_denies_by_default_first() {
        for role in ROLES {
            let p = profile(role);
            let mut lines = p.lines();
            assert_eq!(lines.next(), Some("(version 1)"), "{role:?}");
            assert_eq!(lines.next(), Some("(deny default)"), "{role:?}");
            assert!(!p.contains("(allow default)"), "{role:?}");
            // Balanced parentheses, one rule per line.
            for line in p.lines() {
                let open = line.matches('(').count();
                assert_eq!(open, line.matches(')').count(), "{line}");
            }
        }
    }

    #[test]
    fn keyd_has_no_network_no_files_no_processes() {
        let p = profile(Role::Keyd);
        for forbidden in [
            "network",
            "file-",
            "process-",
            "mach-",
            "iokit",
            "system-socket",
        ] {
            assert!(
                !allows(&p).iter().any(|r| r.contains(forbidden)),
                "keyd allows {forbidden}: {p}"
            );
        }
        assert_eq!(
            allows(&p),
            ["(allow signal (target self))", "(allow sysctl-read)"]
        );
    }

    #[test]
    fn datad_has_udp_but_no_files_and_no_processes() {
        let p = profile(Role::Datad);
        for forbidden in [
            "file-",
            "process-",
            "mach-",
            "system-socket",
            "network-bind",
        ] {
            assert!(
                !allows(&p).iter().any(|r| r.contains(forbidden)),
                "datad allows {forbidden}: {p}"
            );
        }
        assert!(p.contains("(allow network-outbound (remote ip"));
        // Only ip: no Unix-socket paths (which would be `(remote unix ...)`/`literal`).
        assert!(!p.contains("unix") && !p.contains("literal"));
    }

    #[test]
    fn the_spawner_may_exec_only_the_data_plane() {
        let p = profile(Role::Spawner);
        let execs: Vec<_> = allows(&p)
            .into_iter()
            .filter(|r| r.contains("process-exec"))
            .collect();
        assert_eq!(
            execs,
            [format!("(allow process-exec (literal \"{DATAD}\"))")]
        );
        assert!(!p.contains("file-write"));
        assert!(!p.contains("network"));
        assert_eq!(
            macos_profile(Role::Spawner, None),
            Err(PolicyError::MissingHelperPath)
        );
        for bad in [
            "relative/datad",
            "/x\") (allow default) (\"",
            "/a\\b",
            "/a\nb",
        ] {
            assert!(
                matches!(
                    macos_profile(Role::Spawner, Some(bad)),
                    Err(PolicyError::UnsafePath(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn workers_cannot_fork_or_grow_files() {
        for role in [Role::Keyd, Role::Datad] {
            let r = rlimits(role);
            assert_eq!((r.fsize, r.nproc), (0, Some(0)), "{role:?}");
            assert!(r.nofile > 0 && r.nofile <= 64);
        }
        assert_eq!(rlimits(Role::Spawner).fsize, 0);
    }

    #[test]
    fn capsicum_numbers_are_the_headers() {
        // <sys/capsicum.h>: CAPRIGHT(idx, bit) = (1 << (57 + idx)) | bit.
        assert_eq!(cap::READ, 0x0200_0000_0000_0001);
        assert_eq!(cap::WRITE, 0x0200_0000_0000_0002);
        assert_eq!(cap::CONNECT, 0x0200_0000_8000_0000);
        assert_eq!(cap::ACCEPT, 0x0200_0000_2000_0000);
        assert_eq!(cap::GETSOCKOPT, 0x0200_0004_0000_0000);
        assert_eq!(cap::EVENT, 0x0400_0000_0000_0020);
        assert_eq!(cap::IOCTL, 0x0400_0000_0000_0080);
    }

    #[cfg(target_os = "freebsd")]
    #[test]
    fn capsicum_numbers_match_libc() {
        let pairs = [
            (cap::READ, libc::CAP_READ),
            (cap::WRITE, libc::CAP_WRITE),
            (cap::FSTAT, libc::CAP_FSTAT),
            (cap::ACCEPT, libc::CAP_ACCEPT),
            (cap::BIND, libc::CAP_BIND),
            (cap::CONNECT, libc::CAP_CONNECT),
            (cap::GETSOCKNAME, libc::CAP_GETSOCKNAME),
            (cap::GETSOCKOPT, libc::CAP_GETSOCKOPT),
            (cap::LISTEN, libc::CAP_LISTEN),
            (cap::SETSOCKOPT, libc::CAP_SETSOCKOPT),
            (cap::LOOKUP, libc::CAP_LOOKUP),
            (cap::FCNTL, libc::CAP_FCNTL),
            (cap::EVENT, libc::CAP_EVENT),
            (cap::IOCTL, libc::CAP_IOCTL),
        ];
        for (ours, theirs) in pairs {
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn descriptors_get_io_and_events_only() {
        let never = [
            cap::BIND,
            cap::LISTEN,
            cap::SETSOCKOPT,
            cap::LOOKUP,
            cap::IOCTL,
            cap::FCNTL,
        ];
        for kind in [
            DescriptorKind::Tun,
            DescriptorKind::Udp,
            DescriptorKind::IpcChannel,
            DescriptorKind::UapiListener,
        ] {
            let rights = capsicum_rights(kind);
            assert!(rights.contains(&cap::EVENT), "{kind:?}");
            for r in never {
                assert!(!rights.contains(&r), "{kind:?} has {r:#x}");
            }
        }
        // Only the UDP socket may name a destination; only the listener may accept.
        for kind in [DescriptorKind::Tun, DescriptorKind::IpcChannel] {
            assert!(!capsicum_rights(kind).contains(&cap::CONNECT));
            assert!(!capsicum_rights(kind).contains(&cap::ACCEPT));
        }
        // The connections keyd accepts inherit the listener's rights: they must carry a
        // request and its answer and tell who the client is, and nothing network-wide.
        let uapi = capsicum_rights(DescriptorKind::UapiListener);
        for needed in [cap::ACCEPT, cap::READ, cap::WRITE, cap::GETSOCKOPT] {
            assert!(uapi.contains(&needed), "{needed:#x}");
        }
        assert!(!uapi.contains(&cap::CONNECT));
    }

    #[test]
    fn keyd_holds_no_network_descriptor_and_enters_capability_mode() {
        let keyd = capsicum_descriptors(Role::Keyd);
        assert!(!keyd.contains(&DescriptorKind::Udp));
        assert!(!keyd.contains(&DescriptorKind::Tun));
        assert_eq!(capsicum_mode(Role::Keyd), CapabilityMode::Enter);
        assert!(matches!(
            capsicum_mode(Role::Datad),
            CapabilityMode::RightsOnly(why) if why.contains("ECAPMODE")
        ));
        assert!(!capsicum_descriptors(Role::Datad).contains(&DescriptorKind::UapiListener));
    }

    #[test]
    fn pledges_give_keyd_no_network_and_no_files() {
        let words = |role| pledge_promises(role).split(' ').collect::<Vec<_>>();
        for file in ["rpath", "wpath", "cpath", "dpath", "fattr", "exec", "proc"] {
            assert!(!words(Role::Keyd).contains(&file), "keyd: {file}");
            assert!(!words(Role::Datad).contains(&file), "datad: {file}");
        }
        for net in ["inet", "dns", "recvfd", "sendfd"] {
            assert!(!words(Role::Keyd).contains(&net), "keyd: {net}");
        }
        for role in ROLES {
            assert_eq!(words(role)[0], "stdio");
        }
        assert!(words(Role::Datad).contains(&"inet"));
        assert!(unveil_paths(Role::Keyd, None).unwrap().is_empty());
        assert!(unveil_paths(Role::Datad, Some(DATAD)).unwrap().is_empty());
        let spawner = unveil_paths(Role::Spawner, Some(DATAD)).unwrap();
        assert!(spawner.iter().all(|(_, perms)| !perms.contains(['w', 'c'])));
        assert_eq!(spawner.iter().filter(|(_, p)| p.contains('x')).count(), 1);
    }
}
