//! The 4-byte address-family header that macOS utun and BSD tun(4) put in front of every
//! packet (FreeBSD and NetBSD after `TUNSIFHEAD`; OpenBSD always): the family as a
//! big-endian `u32`, then the IP packet.
//!
//! `AF_INET` is 2 everywhere, but `AF_INET6` differs per OS (30 on Apple, 28 on FreeBSD,
//! 24 on NetBSD and OpenBSD), so the OS is a value ([`Os`]) and every OS's numbers are
//! checked on every host; a test compiled for a BSD or Apple target also checks the table
//! against that target's `libc`.
//!
//! The TUN naming rules of these OSes (utun units, `tunN`, interface names) are here too:
//! pure facts the backends rely on, tested on every host.
//!
//! Decoding trusts nothing: a frame that is short, names another family, or whose family
//! does not match the packet's IP version nibble is dropped with a [`AfDrop`] reason.
#![forbid(unsafe_code)]

/// The operating systems whose facts the pure modules of this crate tabulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Os {
    /// Linux (and Android).
    Linux,
    /// macOS (and the other Apple systems: their numbers are the same).
    MacOs,
    /// FreeBSD.
    FreeBsd,
    /// NetBSD.
    NetBsd,
    /// OpenBSD.
    OpenBsd,
    /// Windows.
    Windows,
}

impl Os {
    /// Every OS, for tables and tests.
    pub const ALL: [Os; 6] = [
        Os::Linux,
        Os::MacOs,
        Os::FreeBsd,
        Os::NetBsd,
        Os::OpenBsd,
        Os::Windows,
    ];

    /// The OS this crate is compiled for, or `None` for one it has no facts about.
    pub const fn current() -> Option<Os> {
        if cfg!(any(target_os = "linux", target_os = "android")) {
            Some(Os::Linux)
        } else if cfg!(target_vendor = "apple") {
            Some(Os::MacOs)
        } else if cfg!(target_os = "freebsd") {
            Some(Os::FreeBsd)
        } else if cfg!(target_os = "netbsd") {
            Some(Os::NetBsd)
        } else if cfg!(target_os = "openbsd") {
            Some(Os::OpenBsd)
        } else if cfg!(windows) {
            Some(Os::Windows)
        } else {
            None
        }
    }

    /// The OS's name as users know it, for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Os::Linux => "Linux",
            Os::MacOs => "macOS",
            Os::FreeBsd => "FreeBSD",
            Os::NetBsd => "NetBSD",
            Os::OpenBsd => "OpenBSD",
            Os::Windows => "Windows",
        }
    }
}

/// Bytes of the address-family header in front of each packet.
pub const AF_HEADER_LEN: usize = 4;

/// `AF_INET`: 2 on every OS here.
const AF_INET_ALL: u32 = 2;

/// One OS's address-family header: its numbers for IPv4 and IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AfHeader {
    /// The OS's `AF_INET`.
    pub inet: u32,
    /// The OS's `AF_INET6`.
    pub inet6: u32,
}

/// Why a frame read from a utun or tun descriptor was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AfDrop {
    /// Shorter than the header plus one byte of packet.
    #[error("tun frame of {0} bytes is too short for an address-family header and a packet")]
    Short(usize),
    /// The header names neither this OS's `AF_INET` nor its `AF_INET6`.
    #[error("tun frame names address family {0}, neither IPv4 nor IPv6")]
    UnknownFamily(u32),
    /// The header's family does not match the packet's IP version nibble.
    #[error("tun frame names address family {family} but holds an IP version {version} packet")]
    Mismatch {
        /// The header's family.
        family: u32,
        /// The packet's version nibble.
        version: u8,
    },
}

/// Why a packet could not be framed for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "packet with IP version nibble {0:?} is neither IPv4 nor IPv6: nothing to write to the tun"
)]
pub struct NotIp(pub Option<u8>);

impl AfHeader {
    /// macOS utun (and every Apple OS): `AF_INET6` is 30 (`<sys/socket.h>`).
    pub const APPLE: AfHeader = AfHeader {
        inet: AF_INET_ALL,
        inet6: 30,
    };
    /// FreeBSD tun(4) with `TUNSIFHEAD`: `AF_INET6` is 28.
    pub const FREEBSD: AfHeader = AfHeader {
        inet: AF_INET_ALL,
        inet6: 28,
    };
    /// NetBSD tun(4) with `TUNSIFHEAD`: `AF_INET6` is 24.
    pub const NETBSD: AfHeader = AfHeader {
        inet: AF_INET_ALL,
        inet6: 24,
    };
    /// OpenBSD tun(4), which always frames: `AF_INET6` is 24.
    pub const OPENBSD: AfHeader = AfHeader {
        inet: AF_INET_ALL,
        inet6: 24,
    };

    /// The header `os`'s TUN uses, or `None` where its TUN frames no family (Linux with
    /// `IFF_NO_PI`, Wintun).
    pub const fn for_os(os: Os) -> Option<AfHeader> {
        match os {
            Os::MacOs => Some(AfHeader::APPLE),
            Os::FreeBsd => Some(AfHeader::FREEBSD),
            Os::NetBsd => Some(AfHeader::NETBSD),
            Os::OpenBsd => Some(AfHeader::OPENBSD),
            Os::Linux | Os::Windows => None,
        }
    }

    /// The header for the OS this crate is compiled for, if it frames one.
    pub const fn native() -> Option<AfHeader> {
        match Os::current() {
            Some(os) => AfHeader::for_os(os),
            None => None,
        }
    }

    /// The header to write in front of `packet`, chosen by its IP version nibble.
    pub fn encode(self, packet: &[u8]) -> Result<[u8; AF_HEADER_LEN], NotIp> {
        let family = match packet.first().map(|b| b >> 4) {
            Some(4) => self.inet,
            Some(6) => self.inet6,
            other => return Err(NotIp(other)),
        };
        Ok(family.to_be_bytes())
    }

    /// The IP packet inside `frame`, checked: long enough, a known family, and the family
    /// matching the packet's version nibble.
    pub fn decode(self, frame: &[u8]) -> Result<&[u8], AfDrop> {
        let (Some(header), Some(packet)) = (
            frame.first_chunk::<AF_HEADER_LEN>(),
            frame.get(AF_HEADER_LEN..).filter(|p| !p.is_empty()),
        ) else {
            return Err(AfDrop::Short(frame.len()));
        };
        self.check(*header, packet).map(|()| packet)
    }

    /// Checks a header read apart from its packet (a vectored read): the packet is not
    /// empty, the family is known and matches the packet's version nibble.
    pub fn check(self, header: [u8; AF_HEADER_LEN], packet: &[u8]) -> Result<(), AfDrop> {
        let Some(first) = packet.first() else {
            return Err(AfDrop::Short(AF_HEADER_LEN));
        };
        let family = u32::from_be_bytes(header);
        let version = first >> 4;
        let expected = if family == self.inet {
            4
        } else if family == self.inet6 {
            6
        } else {
            return Err(AfDrop::UnknownFamily(family));
        };
        if version == expected {
            Ok(())
        } else {
            Err(AfDrop::Mismatch { family, version })
        }
    }
}

/// Why a requested TUN interface name cannot be used on this OS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunNameError {
    /// Not `utun` or `utunN` on macOS.
    #[error(
        "macOS names its TUN interfaces utunN: ask for \"utun\" (the next free one) or \"utunN\", not {0:?}"
    )]
    NotUtun(String),
    /// Not `tun` or `tunN` where interfaces cannot be renamed (NetBSD, OpenBSD).
    #[error(
        "{os} cannot rename tun interfaces: ask for \"tun\" (the next free one) or \"tunN\", not {name:?}",
        os = os.name()
    )]
    NotTun {
        /// The OS.
        os: Os,
        /// The name asked for.
        name: String,
    },
    /// Not a valid interface name at all.
    #[error(
        "interface name {0:?} is not valid: use 1 to 15 ASCII letters, digits, '_', '-' or '.', starting with a letter"
    )]
    Invalid(String),
}

/// `IFNAMSIZ` on macOS and the BSDs: 16 bytes with the terminating NUL.
pub const IFNAMSIZ: usize = 16;

/// Checks an interface name for renaming (FreeBSD `SIOCSIFNAME`) or lookup: 1 to
/// `IFNAMSIZ - 1` bytes of ASCII letters, digits, `_`, `-`, `.`, starting with a letter.
pub fn check_ifname(name: &str) -> Result<(), TunNameError> {
    let ok = (1..IFNAMSIZ).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(TunNameError::Invalid(name.to_owned()))
    }
}

/// The unit number after `prefix` in `name`: `Ok(None)` for the bare prefix, `Ok(Some(n))`
/// for `prefix` plus a decimal without leading zeros, `Err(())` otherwise.
fn unit_after(prefix: &str, name: &str) -> Result<Option<u32>, ()> {
    let digits = name.strip_prefix(prefix).ok_or(())?;
    if digits.is_empty() {
        return Ok(None);
    }
    let canonical =
        digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return Err(());
    }
    digits.parse().map(Some).map_err(|_| ())
}

/// The `sc_unit` to connect a macOS utun control socket with, for the requested name:
/// `utun` gives 0 (the kernel picks the next free unit), `utunN` gives N + 1.
pub fn utun_unit(name: &str) -> Result<u32, TunNameError> {
    match unit_after("utun", name) {
        Ok(None) => Ok(0),
        Ok(Some(n)) => n
            .checked_add(1)
            .ok_or_else(|| TunNameError::NotUtun(name.to_owned())),
        Err(()) => Err(TunNameError::NotUtun(name.to_owned())),
    }
}

/// The tun(4) unit for the requested name where interfaces keep their `tunN` names
/// (NetBSD, OpenBSD): `tun` gives `None` (the next free unit), `tunN` gives `Some(N)`.
pub fn bsd_tun_unit(os: Os, name: &str) -> Result<Option<u32>, TunNameError> {
    unit_after("tun", name).map_err(|()| TunNameError::NotTun {
        os,
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const V4: [u8; 4] = [0x45, 0, 0, 4];
    const V6: [u8; 4] = [0x60, 0, 0, 0];

    fn frame(family: u32, packet: &[u8]) -> Vec<u8> {
        [&family.to_be_bytes()[..], packet].concat()
    }

    #[test]
    fn numbers_per_os_match_the_system_headers() {
        // <sys/socket.h>: AF_INET6 is 30 on Darwin, 28 on FreeBSD, 24 on NetBSD/OpenBSD.
        let expected = [
            (Os::MacOs, 30),
            (Os::FreeBsd, 28),
            (Os::NetBsd, 24),
            (Os::OpenBsd, 24),
        ];
        for (os, inet6) in expected {
            assert_eq!(
                AfHeader::for_os(os),
                Some(AfHeader { inet: 2, inet6 }),
                "{os:?}"
            );
        }
        assert_eq!(AfHeader::for_os(Os::Linux), None);
        assert_eq!(AfHeader::for_os(Os::Windows), None);
    }

    /// On a target with a framing TUN, the table agrees with that target's `libc`.
    #[cfg(any(
        target_vendor = "apple",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd"
    ))]
    #[test]
    fn native_numbers_match_libc() {
        let native = AfHeader::native();
        assert_eq!(
            native,
            Some(AfHeader {
                inet: libc::AF_INET as u32,
                inet6: libc::AF_INET6 as u32,
            })
        );
    }

    #[test]
    fn current_os_is_known_on_the_host() {
        #[cfg(target_os = "linux")]
        assert_eq!(Os::current(), Some(Os::Linux));
        #[cfg(target_os = "linux")]
        assert_eq!(AfHeader::native(), None);
        #[cfg(target_os = "macos")]
        assert_eq!(Os::current(), Some(Os::MacOs));
        #[cfg(target_os = "freebsd")]
        assert_eq!(Os::current(), Some(Os::FreeBsd));
        assert!(Os::current().is_some());
    }

    #[test]
    fn headers_are_big_endian_and_chosen_by_version() {
        let h = AfHeader::FREEBSD;
        assert_eq!(h.encode(&V4), Ok([0, 0, 0, 2]));
        assert_eq!(h.encode(&V6), Ok([0, 0, 0, 28]));
        assert_eq!(AfHeader::APPLE.encode(&V6), Ok([0, 0, 0, 30]));
        assert_eq!(AfHeader::NETBSD.encode(&V6), Ok([0, 0, 0, 24]));
        assert_eq!(h.encode(&[]), Err(NotIp(None)));
        assert_eq!(h.encode(&[0x50]), Err(NotIp(Some(5))));
    }

    #[test]
    fn short_unknown_and_mismatched_frames_are_dropped() {
        let h = AfHeader::APPLE;
        assert_eq!(h.decode(&[]), Err(AfDrop::Short(0)));
        assert_eq!(h.decode(&[0, 0, 2]), Err(AfDrop::Short(3)));
        assert_eq!(h.decode(&[0, 0, 0, 2]), Err(AfDrop::Short(4)));
        // Little-endian AF_INET is garbage.
        assert_eq!(
            h.decode(&frame(2u32.swap_bytes(), &V4)),
            Err(AfDrop::UnknownFamily(2u32.swap_bytes()))
        );
        // Another OS's AF_INET6 is not this OS's.
        assert_eq!(h.decode(&frame(28, &V6)), Err(AfDrop::UnknownFamily(28)));
        assert_eq!(
            h.decode(&frame(30, &V4)),
            Err(AfDrop::Mismatch {
                family: 30,
                version: 4
            })
        );
        assert_eq!(
            h.decode(&frame(2, &[0x10, 0])),
            Err(AfDrop::Mismatch {
                family: 2,
                version: 1
            })
        );
        assert_eq!(h.decode(&frame(2, &V4)), Ok(&V4[..]));
        assert_eq!(h.decode(&frame(30, &V6)), Ok(&V6[..]));
    }

    #[test]
    fn utun_names_map_to_control_units() {
        assert_eq!(utun_unit("utun"), Ok(0));
        assert_eq!(utun_unit("utun0"), Ok(1));
        assert_eq!(utun_unit("utun7"), Ok(8));
        for bad in [
            "wg0",
            "utun07",
            "utun-1",
            "utun4294967295",
            "utun 1",
            "UTUN1",
            "",
        ] {
            assert_eq!(
                utun_unit(bad),
                Err(TunNameError::NotUtun(bad.to_owned())),
                "{bad}"
            );
        }
        assert!(utun_unit("wg0").unwrap_err().to_string().contains("utunN"));
    }

    #[test]
    fn bsd_tun_names_and_interface_names() {
        assert_eq!(bsd_tun_unit(Os::NetBsd, "tun"), Ok(None));
        assert_eq!(bsd_tun_unit(Os::NetBsd, "tun12"), Ok(Some(12)));
        assert!(bsd_tun_unit(Os::OpenBsd, "wg0").is_err());
        assert!(bsd_tun_unit(Os::OpenBsd, "tun012").is_err());
        for good in ["wg0", "a", "wg-home.1", "x23456789012345"] {
            assert_eq!(check_ifname(good), Ok(()), "{good}");
        }
        for bad in ["", "0wg", "x234567890123456", "wg/0", "wg 0", "wg\u{e9}"] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }

    fn any_os_header() -> impl Strategy<Value = AfHeader> {
        prop::sample::select(vec![
            AfHeader::APPLE,
            AfHeader::FREEBSD,
            AfHeader::NETBSD,
            AfHeader::OPENBSD,
        ])
    }

    proptest! {
        /// Any IPv4 or IPv6 packet framed by encode comes back unchanged from decode.
        #[test]
        fn round_trip(
            h in any_os_header(),
            v6 in any::<bool>(),
            low in 0u8..16,
            rest in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let first = if v6 { 0x60 } else { 0x40 } | low;
            let packet = [&[first][..], &rest].concat();
            let header = h.encode(&packet).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let framed = [&header[..], &packet].concat();
            prop_assert_eq!(h.decode(&framed), Ok(&packet[..]));
        }

        /// Decode never accepts a frame whose version nibble disagrees with its family,
        /// and never panics.
        #[test]
        fn decode_accepts_only_consistent_frames(
            h in any_os_header(),
            frame in prop::collection::vec(any::<u8>(), 0..16),
        ) {
            if let Ok(packet) = h.decode(&frame) {
                let family = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
                let version = packet[0] >> 4;
                prop_assert!(
                    (family == h.inet && version == 4) || (family == h.inet6 && version == 6)
                );
                prop_assert_eq!(packet, &frame[4..]);
            }
        }
    }
}
