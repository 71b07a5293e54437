//! Field offsets of the IPv4, IPv6, TCP and UDP headers and panic-free accessors.

/// IP protocol number of TCP.
pub(crate) const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub(crate) const PROTO_UDP: u8 = 17;

/// IPv4 header without options.
pub(crate) const IPV4_MIN_LEN: usize = 20;
/// IPv4 total length field.
pub(crate) const IPV4_TOTAL_LEN: usize = 2;
/// IPv4 identification field.
pub(crate) const IPV4_ID: usize = 4;
/// IPv4 flags (3 bits) and fragment offset (13 bits).
pub(crate) const IPV4_FRAG: usize = 6;
/// More-fragments bit and fragment offset: non-zero means a fragment.
pub(crate) const IPV4_FRAG_MASK: u16 = 0x3fff;
/// Fragment offset alone: non-zero means a fragment after the first (no transport header).
pub(crate) const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;
/// IPv4 protocol field.
pub(crate) const IPV4_PROTOCOL: usize = 9;
/// IPv4 header checksum field.
pub(crate) const IPV4_CHECKSUM: usize = 10;
/// IPv4 source and destination addresses, 4 bytes each.
pub(crate) const IPV4_ADDRS: usize = 12;

/// IPv6 fixed header.
pub(crate) const IPV6_LEN: usize = 40;
/// IPv6 payload length field.
pub(crate) const IPV6_PAYLOAD_LEN: usize = 4;
/// IPv6 next header field.
pub(crate) const IPV6_NEXT_HEADER: usize = 6;
/// IPv6 source and destination addresses, 16 bytes each.
pub(crate) const IPV6_ADDRS: usize = 8;

/// TCP header without options.
pub(crate) const TCP_MIN_LEN: usize = 20;
/// TCP sequence number.
pub(crate) const TCP_SEQ: usize = 4;
/// TCP data offset (high nibble, in 32-bit words).
pub(crate) const TCP_DATA_OFFSET: usize = 12;
/// TCP flags byte.
pub(crate) const TCP_FLAGS: usize = 13;
/// TCP checksum field.
pub(crate) const TCP_CHECKSUM: usize = 16;

/// TCP flag bits in [`TCP_FLAGS`].
pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_PSH: u8 = 0x08;
pub(crate) const TCP_ACK: u8 = 0x10;
pub(crate) const TCP_CWR: u8 = 0x80;

/// UDP header.
pub(crate) const UDP_LEN: usize = 8;
/// UDP length field.
pub(crate) const UDP_LENGTH: usize = 4;
/// UDP checksum field.
pub(crate) const UDP_CHECKSUM: usize = 6;

/// Big-endian `u16` at `at`, if the bytes are there.
#[inline]
pub(crate) fn get_u16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..)?.first_chunk::<2>()?;
    Some(u16::from_be_bytes(*bytes))
}

/// Big-endian `u32` at `at`, if the bytes are there.
#[inline]
pub(crate) fn get_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..)?.first_chunk::<4>()?;
    Some(u32::from_be_bytes(*bytes))
}

/// Stores a big-endian `u16` at `at`; `None` if it does not fit.
#[inline]
pub(crate) fn set_u16(buf: &mut [u8], at: usize, value: u16) -> Option<()> {
    *buf.get_mut(at..)?.first_chunk_mut::<2>()? = value.to_be_bytes();
    Some(())
}

/// Stores a big-endian `u32` at `at`; `None` if it does not fit.
#[inline]
pub(crate) fn set_u32(buf: &mut [u8], at: usize, value: u32) -> Option<()> {
    *buf.get_mut(at..)?.first_chunk_mut::<4>()? = value.to_be_bytes();
    Some(())
}

/// Where the transport header of an IPv6 packet starts, and its protocol, after the
/// extension headers that may precede TCP or UDP in a segmentable packet.
pub(crate) enum Ipv6Transport {
    /// Transport `protocol` at `offset`, reached through hop-by-hop and destination options
    /// only.
    Found { protocol: u8, offset: usize },
    /// A routing header (the pseudo-header would need the final destination) or a fragment
    /// header (a fragment cannot be segmented, nor a non-first one merged).
    Unsupported,
    /// The extension header chain runs past the packet or is too long.
    Malformed,
}

/// Walks the IPv6 extension header chain of `packet` (at most a handful of headers).
pub(crate) fn ipv6_transport(packet: &[u8]) -> Ipv6Transport {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const DESTINATION_OPTIONS: u8 = 60;
    // Real packets carry one or two; the bound keeps a crafted chain from costing more.
    const MAX_EXTENSION_HEADERS: usize = 8;

    let Some(&first) = packet.get(IPV6_NEXT_HEADER) else {
        return Ipv6Transport::Malformed;
    };
    let mut protocol = first;
    let mut offset = IPV6_LEN;
    for _ in 0..MAX_EXTENSION_HEADERS {
        match protocol {
            HOP_BY_HOP | DESTINATION_OPTIONS => {
                // Next header, then length in 8-byte units not counting the first 8.
                let (Some(&next), Some(&units)) = (packet.get(offset), packet.get(offset + 1))
                else {
                    return Ipv6Transport::Malformed;
                };
                protocol = next;
                offset += (usize::from(units) + 1) * 8;
            }
            ROUTING | FRAGMENT => return Ipv6Transport::Unsupported,
            _ => {
                return if offset <= packet.len() {
                    Ipv6Transport::Found { protocol, offset }
                } else {
                    Ipv6Transport::Malformed
                };
            }
        }
    }
    Ipv6Transport::Malformed
}
