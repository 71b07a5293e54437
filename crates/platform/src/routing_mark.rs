//! What a UDP socket can be told per OS, as data: the socket option behind UAPI's
//! `fwmark` (the routing mark), and the batching the OS offers for sending and receiving.
//!
//! The routing mark, where an OS has one (the same options wireguard-go sets):
//! - Linux: `SO_MARK`, the firewall mark policy routing matches on;
//! - FreeBSD: `SO_USER_COOKIE`, a cookie ipfw and pf can match on;
//! - OpenBSD: `SO_RTABLE`, the routing table (0 to `RT_TABLEID_MAX`, 255);
//! - macOS, NetBSD, Windows: none. A non-zero `fwmark` there is refused with a message
//!   telling the user to set it to 0 (`off`), rather than silently ignored.
//!
//! Batching: Linux has UDP GSO/GRO (`UDP_SEGMENT`, `UDP_GRO`) and `sendmmsg`/`recvmmsg`;
//! FreeBSD, NetBSD and OpenBSD (7.2 and later) have `sendmmsg`/`recvmmsg`; macOS and
//! Windows get one datagram per call here.
#![forbid(unsafe_code)]

use crate::Os;

/// `SOL_SOCKET` on Linux (`<asm-generic/socket.h>`).
const SOL_SOCKET_LINUX: i32 = 1;
/// `SOL_SOCKET` on the BSDs and Apple (`<sys/socket.h>`).
const SOL_SOCKET_BSD: i32 = 0xffff;

/// A socket option: the `level` and `name` arguments of `setsockopt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SockOpt {
    /// The protocol level (`SOL_SOCKET`, ...).
    pub level: i32,
    /// The option (`SO_MARK`, ...).
    pub name: i32,
    /// The option's name in the OS's headers, for messages.
    pub c_name: &'static str,
}

/// The routing-mark option of an OS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoutingMark {
    /// The option to set, with the mark as a C `int`/`uint32_t`.
    pub option: SockOpt,
    /// The largest mark the OS accepts.
    pub max: u32,
}

/// Linux `SO_MARK` (`<asm-generic/socket.h>`: 36).
pub const LINUX_SO_MARK: RoutingMark = RoutingMark {
    option: SockOpt {
        level: SOL_SOCKET_LINUX,
        name: 36,
        c_name: "SO_MARK",
    },
    max: u32::MAX,
};

/// FreeBSD `SO_USER_COOKIE` (`<sys/socket.h>`: 0x1015).
pub const FREEBSD_SO_USER_COOKIE: RoutingMark = RoutingMark {
    option: SockOpt {
        level: SOL_SOCKET_BSD,
        name: 0x1015,
        c_name: "SO_USER_COOKIE",
    },
    max: u32::MAX,
};

/// OpenBSD `SO_RTABLE` (`<sys/socket.h>`: 0x1021), a routing table up to `RT_TABLEID_MAX`
/// (`<sys/socket.h>`: 255).
pub const OPENBSD_SO_RTABLE: RoutingMark = RoutingMark {
    option: SockOpt {
        level: SOL_SOCKET_BSD,
        name: 0x1021,
        c_name: "SO_RTABLE",
    },
    max: 255,
};

/// Why a routing mark cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RoutingMarkError {
    /// The OS has no routing mark.
    #[error(
        "fwmark {mark} is not supported on {}: it has no routing mark for sockets; set fwmark to 0 (off)",
        os.name()
    )]
    Unsupported {
        /// The OS.
        os: Os,
        /// The mark asked for.
        mark: u32,
    },
    /// Above what the OS's option takes (OpenBSD's routing tables).
    #[error(
        "fwmark {mark} is out of range on {}: its {c_name} takes 0 to {max}; pick a mark in that range or 0 (off)",
        os.name()
    )]
    OutOfRange {
        /// The OS.
        os: Os,
        /// The mark asked for.
        mark: u32,
        /// The option's C name.
        c_name: &'static str,
        /// The largest mark it takes.
        max: u32,
    },
}

/// The routing-mark option of `os`, if it has one.
pub const fn routing_mark(os: Os) -> Option<RoutingMark> {
    match os {
        Os::Linux => Some(LINUX_SO_MARK),
        Os::FreeBsd => Some(FREEBSD_SO_USER_COOKIE),
        Os::OpenBsd => Some(OPENBSD_SO_RTABLE),
        Os::MacOs | Os::NetBsd | Os::Windows => None,
    }
}

/// What to do for UAPI's `fwmark=mark` on `os`: `Ok(None)` for 0 (off: nothing to set,
/// on every OS), `Ok(Some(option))` to set `mark` with `option`, or why it cannot be done.
pub fn apply_mark(os: Os, mark: u32) -> Result<Option<SockOpt>, RoutingMarkError> {
    if mark == 0 {
        return Ok(None);
    }
    match routing_mark(os) {
        None => Err(RoutingMarkError::Unsupported { os, mark }),
        Some(rm) if mark > rm.max => Err(RoutingMarkError::OutOfRange {
            os,
            mark,
            c_name: rm.option.c_name,
            max: rm.max,
        }),
        Some(rm) => Ok(Some(rm.option)),
    }
}

/// The UDP batching an OS offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpBatching {
    /// `sendmmsg`/`recvmmsg`: many datagrams per system call.
    pub mmsg: bool,
    /// Segmentation offload on send (Linux `UDP_SEGMENT`).
    pub gso: bool,
    /// Receive coalescing (Linux `UDP_GRO`).
    pub gro: bool,
}

/// Linux's UDP offload options (`<linux/udp.h>`, level `SOL_UDP` 17).
pub const LINUX_UDP_SEGMENT: SockOpt = SockOpt {
    level: 17,
    name: 103,
    c_name: "UDP_SEGMENT",
};
/// Linux's `UDP_GRO` (`<linux/udp.h>`).
pub const LINUX_UDP_GRO: SockOpt = SockOpt {
    level: 17,
    name: 104,
    c_name: "UDP_GRO",
};

/// The UDP batching `os` offers (each still probed at run time where the kernel may be
/// older: GSO/GRO on Linux, `sendmmsg` on OpenBSD before 7.2).
pub const fn udp_batching(os: Os) -> UdpBatching {
    match os {
        Os::Linux => UdpBatching {
            mmsg: true,
            gso: true,
            gro: true,
        },
        Os::FreeBsd | Os::NetBsd | Os::OpenBsd => UdpBatching {
            mmsg: true,
            gso: false,
            gro: false,
        },
        Os::MacOs | Os::Windows => UdpBatching {
            mmsg: false,
            gso: false,
            gro: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_per_os_are_the_header_values() {
        let names = |os| routing_mark(os).map(|rm| (rm.option.level, rm.option.name, rm.max));
        assert_eq!(names(Os::Linux), Some((1, 36, u32::MAX)));
        assert_eq!(names(Os::FreeBsd), Some((0xffff, 0x1015, u32::MAX)));
        assert_eq!(names(Os::OpenBsd), Some((0xffff, 0x1021, 255)));
        for os in [Os::MacOs, Os::NetBsd, Os::Windows] {
            assert_eq!(names(os), None, "{os:?}");
        }
    }

    #[test]
    fn zero_is_off_everywhere_and_a_mark_is_refused_where_unsupported() {
        for os in Os::ALL {
            assert_eq!(apply_mark(os, 0), Ok(None), "{os:?}");
        }
        assert_eq!(
            apply_mark(Os::Linux, 0xdead_beef),
            Ok(Some(LINUX_SO_MARK.option))
        );
        assert_eq!(
            apply_mark(Os::FreeBsd, 1),
            Ok(Some(FREEBSD_SO_USER_COOKIE.option))
        );
        assert_eq!(
            apply_mark(Os::OpenBsd, 255),
            Ok(Some(OPENBSD_SO_RTABLE.option))
        );
        let err = apply_mark(Os::MacOs, 51820).unwrap_err();
        assert_eq!(
            err,
            RoutingMarkError::Unsupported {
                os: Os::MacOs,
                mark: 51820
            }
        );
        let message = err.to_string();
        assert!(message.contains("macOS") && message.contains("set fwmark to 0"));
        let err = apply_mark(Os::OpenBsd, 256).unwrap_err();
        assert!(matches!(err, RoutingMarkError::OutOfRange { max: 255, .. }));
        assert!(err.to_string().contains("SO_RTABLE"));
    }

    #[test]
    fn batching_per_os() {
        assert_eq!(
            udp_batching(Os::Linux),
            UdpBatching {
                mmsg: true,
                gso: true,
                gro: true
            }
        );
        for os in [Os::FreeBsd, Os::NetBsd, Os::OpenBsd] {
            let b = udp_batching(os);
            assert!(b.mmsg && !b.gso && !b.gro, "{os:?}");
        }
        for os in [Os::MacOs, Os::Windows] {
            let b = udp_batching(os);
            assert!(!b.mmsg && !b.gso && !b.gro, "{os:?}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn linux_numbers_match_libc() {
        let o = LINUX_SO_MARK.option;
        assert_eq!((o.level, o.name), (libc::SOL_SOCKET, libc::SO_MARK));
        // glibc's libc bindings lack UDP_SEGMENT/UDP_GRO (103, 104 in <linux/udp.h>).
        assert_eq!(LINUX_UDP_SEGMENT.level, libc::SOL_UDP);
        assert_eq!(LINUX_UDP_GRO.level, libc::SOL_UDP);
        assert_eq!((LINUX_UDP_SEGMENT.name, LINUX_UDP_GRO.name), (103, 104));
    }

    #[cfg(target_os = "freebsd")]
    #[test]
    fn freebsd_numbers_match_libc() {
        let o = FREEBSD_SO_USER_COOKIE.option;
        assert_eq!((o.level, o.name), (libc::SOL_SOCKET, libc::SO_USER_COOKIE));
    }

    #[cfg(target_os = "openbsd")]
    #[test]
    fn openbsd_numbers_match_libc() {
        let o = OPENBSD_SO_RTABLE.option;
        assert_eq!((o.level, o.name), (libc::SOL_SOCKET, libc::SO_RTABLE));
    }

    #[cfg(any(target_vendor = "apple", target_os = "netbsd"))]
    #[test]
    fn native_libc_has_the_bsd_sol_socket() {
        assert_eq!(SOL_SOCKET_BSD, libc::SOL_SOCKET);
    }
}
