//! How packets sit on the TUN descriptor: bare IP packets, or each behind a 4-byte
//! address-family header (Apple's utun, the BSDs' tun(4)), checked by `wg-platform`'s
//! [`AfHeader`].

use wg_platform::af::{AfDrop, AfHeader};

/// This target's address-family numbers: `wg-platform`'s table where the OS's TUN frames
/// a family (Apple's utun, the BSDs' tun(4)); elsewhere (Linux and Android, whose TUN has
/// no header, but whose socket pairs and tests may use this framing) the C library's.
const HEADER: AfHeader = match AfHeader::native() {
    Some(header) => header,
    None => AfHeader {
        inet: libc::AF_INET as u32,
        inet6: libc::AF_INET6 as u32,
    },
};

/// Bytes of the address-family header of [`Framing::AfHeader`].
pub const AF_HEADER_LEN: usize = wg_platform::af::AF_HEADER_LEN;

/// How packets are framed on the TUN descriptor.
///
/// ```
/// use wg_tunnel::Framing;
///
/// // An IPv4 packet (version nibble 4) behind its utun header.
/// let packet = [0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
/// let header = Framing::AfHeader.header(&packet).unwrap();
/// assert_eq!(header, (libc::AF_INET as u32).to_be_bytes());
/// let frame = [&header[..], &packet[..]].concat();
/// assert_eq!(Framing::AfHeader.decode(&frame).unwrap(), &packet[..]);
/// // Raw framing: the frame is the packet.
/// assert_eq!(Framing::Raw.decode(&packet).unwrap(), &packet[..]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// Each read or write is one bare IP packet (Linux and Android TUN without
    /// `IFF_NO_PI` cleared: what `wg_tun` and `VpnService.Builder.establish()` hand out).
    Raw,
    /// Each packet follows a 4-byte big-endian address family: `AF_INET` or `AF_INET6` of
    /// the target OS (2 and 30 on Apple, 28 on FreeBSD, 24 on NetBSD, 10 on Linux). Apple's
    /// utun descriptor, as a `NEPacketTunnelProvider` hands it over; the BSDs' tun(4) with
    /// `TUNSIFHEAD`.
    AfHeader,
}

/// Why a frame read from the TUN descriptor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than the header, or no IP packet after it.
    #[error("frame of {0} bytes is too short")]
    Short(usize),
    /// The header names neither `AF_INET` nor `AF_INET6`.
    #[error("unknown address family {0} in the frame header")]
    UnknownFamily(u32),
    /// The header's family does not match the packet's IP version.
    #[error("address family {family} does not match IP version {version}")]
    Mismatch {
        /// The header's family.
        family: u32,
        /// The packet's version nibble.
        version: u8,
    },
}

impl Framing {
    /// Bytes in front of each packet.
    pub const fn header_len(self) -> usize {
        match self {
            Framing::Raw => 0,
            Framing::AfHeader => AF_HEADER_LEN,
        }
    }

    /// The IP packet in a frame read from the descriptor. An empty frame, or (with
    /// [`Framing::AfHeader`]) a header that is short, names another family or does not
    /// match the packet's IP version, is refused.
    pub fn decode(self, frame: &[u8]) -> Result<&[u8], FrameError> {
        match self {
            Framing::Raw if frame.is_empty() => Err(FrameError::Short(0)),
            Framing::Raw => Ok(frame),
            Framing::AfHeader => HEADER.decode(frame).map_err(FrameError::from),
        }
    }

    /// The header to write in front of `packet`: `None` for a packet that is neither IPv4
    /// nor IPv6; empty for [`Framing::Raw`] (see [`Framing::header_len`]).
    pub fn header(self, packet: &[u8]) -> Option<[u8; AF_HEADER_LEN]> {
        let header = HEADER.encode(packet).ok()?;
        Some(match self {
            Framing::Raw => [0; AF_HEADER_LEN],
            Framing::AfHeader => header,
        })
    }
}

impl From<AfDrop> for FrameError {
    fn from(drop: AfDrop) -> Self {
        match drop {
            AfDrop::Short(len) => FrameError::Short(len),
            AfDrop::UnknownFamily(family) => FrameError::UnknownFamily(family),
            AfDrop::Mismatch { family, version } => FrameError::Mismatch { family, version },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This target's numbers, as the header carries them.
    const AF_INET: u32 = HEADER.inet;
    const AF_INET6: u32 = HEADER.inet6;

    const V4: [u8; 4] = [0x45, 0, 0, 4];
    const V6: [u8; 4] = [0x60, 0, 0, 0];

    fn frame(family: u32, packet: &[u8]) -> Vec<u8> {
        [&family.to_be_bytes()[..], packet].concat()
    }

    #[test]
    fn both_families_round_trip_with_the_targets_numbers() {
        #[cfg(target_vendor = "apple")]
        assert_eq!((AF_INET, AF_INET6), (2, 30));
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!((AF_INET, AF_INET6), (2, 10));
        #[cfg(target_os = "freebsd")]
        assert_eq!((AF_INET, AF_INET6), (2, 28));
        #[cfg(target_os = "netbsd")]
        assert_eq!((AF_INET, AF_INET6), (2, 24));
        // Where the numbers come from wg-platform's table (Apple, the BSDs), they must be
        // the C library's for this target.
        assert_eq!(
            (AF_INET, AF_INET6),
            (libc::AF_INET as u32, libc::AF_INET6 as u32)
        );
        for (packet, family) in [(&V4, AF_INET), (&V6, AF_INET6)] {
            let header = Framing::AfHeader.header(packet).unwrap();
            assert_eq!(header, family.to_be_bytes());
            let f = frame(family, packet);
            assert_eq!(Framing::AfHeader.decode(&f), Ok(&packet[..]));
            assert_eq!(Framing::Raw.decode(packet), Ok(&packet[..]));
        }
        assert_eq!(Framing::Raw.header_len(), 0);
        assert_eq!(Framing::AfHeader.header_len(), 4);
    }

    #[test]
    fn short_unknown_and_mismatched_headers_are_refused() {
        assert_eq!(Framing::AfHeader.decode(&[]), Err(FrameError::Short(0)));
        assert_eq!(
            Framing::AfHeader.decode(&[0, 0, 2]),
            Err(FrameError::Short(3))
        );
        assert_eq!(
            Framing::AfHeader.decode(&AF_INET.to_be_bytes()),
            Err(FrameError::Short(4))
        );
        assert_eq!(Framing::Raw.decode(&[]), Err(FrameError::Short(0)));
        // Little-endian AF_INET is garbage, as is any other number.
        assert_eq!(
            Framing::AfHeader.decode(&frame(AF_INET.swap_bytes(), &V4)),
            Err(FrameError::UnknownFamily(AF_INET.swap_bytes()))
        );
        assert_eq!(
            Framing::AfHeader.decode(&frame(7, &V4)),
            Err(FrameError::UnknownFamily(7))
        );
        assert_eq!(
            Framing::AfHeader.decode(&frame(AF_INET6, &V4)),
            Err(FrameError::Mismatch {
                family: AF_INET6,
                version: 4
            })
        );
        assert_eq!(
            Framing::AfHeader.decode(&frame(AF_INET, &[0x10, 0, 0])),
            Err(FrameError::Mismatch {
                family: AF_INET,
                version: 1
            })
        );
        // Nothing to frame: not an IP packet.
        assert_eq!(Framing::AfHeader.header(&[]), None);
        assert_eq!(Framing::AfHeader.header(&[0x50]), None);
    }
}
