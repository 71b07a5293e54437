//! Segmentation of one TUN read (TSO/USO) into wire-sized packets with complete checksums.

use crate::OffloadError;
use crate::checksum::{checksum, fold, sum};
use crate::ip::{
    IPV4_ADDRS, IPV4_CHECKSUM, IPV4_FRAG, IPV4_FRAG_MASK, IPV4_ID, IPV4_MIN_LEN, IPV4_PROTOCOL,
    IPV4_TOTAL_LEN, IPV6_ADDRS, IPV6_LEN, IPV6_PAYLOAD_LEN, Ipv6Transport, PROTO_TCP, PROTO_UDP,
    TCP_CHECKSUM, TCP_CWR, TCP_DATA_OFFSET, TCP_FIN, TCP_FLAGS, TCP_MIN_LEN, TCP_PSH, TCP_SEQ,
    UDP_CHECKSUM, UDP_LEN, UDP_LENGTH, get_u16, get_u32, ipv6_transport, set_u16, set_u32,
};
use crate::vnet::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR_LEN, VirtioNetHdr};

/// Where [`split`] writes segments: the data plane hands out slots in its pooled buffers
/// (with room before and after for the WireGuard header and tag), tests use `Vec<Vec<u8>>`.
///
/// **Contract on error:** when [`split`] returns `Err`, every slot it obtained during that
/// call holds a partial result and must be discarded, not sent. Only
/// [`OffloadError::SinkFull`] and [`OffloadError::SinkSlotSize`] can happen after the first
/// slot was taken (`SinkFull::written` says how many); every other error is detected before
/// `next_segment` is called at all.
pub trait SegmentSink {
    /// Space for the next segment of exactly `len` bytes; `None` when the sink is full.
    /// The contents of the slot do not matter: `split` overwrites all of it.
    fn next_segment(&mut self, len: usize) -> Option<&mut [u8]>;
}

/// Unbounded: pushes `vec![0; len]` per segment (for tests and tools, not the hot path).
impl SegmentSink for Vec<Vec<u8>> {
    fn next_segment(&mut self, len: usize) -> Option<&mut [u8]> {
        self.push(vec![0; len]);
        self.last_mut().map(Vec::as_mut_slice)
    }
}

/// Turns one TUN read (virtio-net header + packet) into wire-ready IP packets with
/// complete, correct checksums, written into `sink` in order. Returns how many.
///
/// - `GSO_NONE`: the packet as is; with `NEEDS_CSUM` the checksum from `csum_start` to the
///   end is completed into `csum_start + csum_offset` (which holds the pseudo-header sum).
/// - `GSO_TCPV4`/`GSO_TCPV6` (with or without `GSO_ECN`): the payload is cut into
///   `gso_size` pieces, each with a copy of the IP and TCP headers: IPv4 total length, ID
///   (first + i, wrapping) and header checksum, or IPv6 payload length; TCP sequence number
///   advanced by the bytes before it, FIN and PSH only on the last segment, CWR only on the
///   first; a TCP checksum computed from scratch.
/// - `GSO_UDP_L4`: likewise with a UDP header per segment (length, checksum; a computed 0
///   is sent as `0xffff`), IPv4 ID incremented.
///
/// The transport header is found at `csum_start`, checked against the IP header; the
/// TCP header length comes from its data offset (`hdr_len` is not trusted). IPv4 must not be
/// a fragment and its total length (IPv6: payload length + 40) must equal the packet's.
/// IPv6 may carry hop-by-hop and destination options before TCP/UDP, but not a routing or
/// fragment header.
///
/// Anything else (`GSO_UDP` (UFO), an unknown type, `gso_size` 0, truncated or inconsistent
/// headers, or more segments than the sink has room for) is an error; see [`SegmentSink`]
/// for what the sink holds then.
pub fn split(read: &[u8], sink: &mut impl SegmentSink) -> Result<usize, OffloadError> {
    let hdr = VirtioNetHdr::parse(read)?;
    let packet = read.get(VNET_HDR_LEN..).unwrap_or_default();
    let base = hdr.gso_type & !VirtioNetHdr::GSO_ECN;
    let ecn = hdr.gso_type & VirtioNetHdr::GSO_ECN != 0;
    match (base, ecn) {
        (VirtioNetHdr::GSO_NONE, false) => pass_through(&hdr, packet, sink),
        (VirtioNetHdr::GSO_TCPV4 | VirtioNetHdr::GSO_TCPV6, _)
        | (VirtioNetHdr::GSO_UDP_L4, false) => segment(&hdr, base, packet, sink),
        _ => Err(OffloadError::UnsupportedGsoType(hdr.gso_type)),
    }
}

/// A slot of exactly `len` bytes from `sink`.
fn take_slot<S: SegmentSink>(
    sink: &mut S,
    len: usize,
    written: usize,
    segments: usize,
) -> Result<&mut [u8], OffloadError> {
    let slot = sink
        .next_segment(len)
        .ok_or(OffloadError::SinkFull { written, segments })?;
    if slot.len() != len {
        return Err(OffloadError::SinkSlotSize {
            requested: len,
            got: slot.len(),
        });
    }
    Ok(slot)
}

/// Internal invariant broken (an offset checked earlier no longer fits): reported, not
/// panicked on.
const INTERNAL: OffloadError = OffloadError::Malformed("internal offset check failed");

/// `GSO_NONE`: one packet, its checksum completed if the kernel left it partial.
fn pass_through(
    hdr: &VirtioNetHdr,
    packet: &[u8],
    sink: &mut impl SegmentSink,
) -> Result<usize, OffloadError> {
    if packet.is_empty() {
        return Err(OffloadError::Truncated {
            what: "IP packet",
            needed: 1,
            got: 0,
        });
    }
    let needs_csum = hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if needs_csum && field + 2 > packet.len() {
        return Err(OffloadError::BadCsumOffset {
            csum_start: hdr.csum_start,
            csum_offset: hdr.csum_offset,
            len: packet.len(),
        });
    }
    let slot = take_slot(sink, packet.len(), 0, 1)?;
    slot.copy_from_slice(packet);
    if needs_csum {
        let covered = slot.get(start..).ok_or(INTERNAL)?;
        let mut value = !checksum(covered, 0);
        // In UDP (the protocol whose checksum sits at offset 6) 0 means "no checksum";
        // 0xffff is the same value in ones' complement.
        if value == 0 && usize::from(hdr.csum_offset) == UDP_CHECKSUM {
            value = 0xffff;
        }
        set_u16(slot, field, value).ok_or(INTERNAL)?;
    }
    Ok(1)
}

/// What segmentation needs to know about the super-packet, all offsets checked.
struct Layout {
    v6: bool,
    tcp: bool,
    /// IP header length (IPv4 with options; IPv6 with extension headers).
    l4_offset: usize,
    /// IP + transport header length: the bytes copied in front of every segment.
    hdr_len: usize,
}

/// `GSO_TCPV4`, `GSO_TCPV6` or `GSO_UDP_L4` (`base`, without the ECN bit).
fn segment(
    hdr: &VirtioNetHdr,
    base: u8,
    packet: &[u8],
    sink: &mut impl SegmentSink,
) -> Result<usize, OffloadError> {
    let layout = check_layout(hdr, base, packet)?;
    let gso_size = usize::from(hdr.gso_size);
    let headers = packet.get(..layout.hdr_len).ok_or(INTERNAL)?;
    let payload = packet.get(layout.hdr_len..).ok_or(INTERNAL)?;
    // An empty payload still makes one (header-only) packet, as Linux sends a GSO skb no
    // longer than one segment unchanged.
    let segments = payload.len().div_ceil(gso_size).max(1);

    let l4 = layout.l4_offset;
    let addrs = if layout.v6 {
        packet.get(IPV6_ADDRS..IPV6_ADDRS + 32)
    } else {
        packet.get(IPV4_ADDRS..IPV4_ADDRS + 8)
    }
    .ok_or(INTERNAL)?;
    let protocol = if layout.tcp { PROTO_TCP } else { PROTO_UDP };
    // Constant part of the pseudo-header; each segment adds its own length.
    let pseudo_base = sum(addrs, u64::from(protocol));
    let first_id = if layout.v6 {
        0
    } else {
        get_u16(packet, IPV4_ID).ok_or(INTERNAL)?
    };
    let first_seq = if layout.tcp {
        get_u32(packet, l4 + TCP_SEQ).ok_or(INTERNAL)?
    } else {
        0
    };
    let tcp_flags = if layout.tcp {
        *packet.get(l4 + TCP_FLAGS).ok_or(INTERNAL)?
    } else {
        0
    };
    let csum_field = l4
        + if layout.tcp {
            TCP_CHECKSUM
        } else {
            UDP_CHECKSUM
        };

    for i in 0..segments {
        let rest = payload.get(i * gso_size..).unwrap_or_default();
        let chunk = rest.get(..gso_size.min(rest.len())).unwrap_or_default();
        let seg_len = layout.hdr_len + chunk.len();
        let slot = take_slot(sink, seg_len, i, segments)?;
        let (slot_headers, slot_payload) =
            slot.split_at_mut_checked(layout.hdr_len).ok_or(INTERNAL)?;
        slot_headers.copy_from_slice(headers);
        slot_payload.copy_from_slice(chunk);

        // `as u16`/`as u32` wrap on purpose: IPv4 IDs and sequence numbers are modular.
        if layout.v6 {
            let payload_len = u16::try_from(seg_len - IPV6_LEN).map_err(|_| INTERNAL)?;
            set_u16(slot, IPV6_PAYLOAD_LEN, payload_len).ok_or(INTERNAL)?;
        } else {
            let total_len = u16::try_from(seg_len).map_err(|_| INTERNAL)?;
            set_u16(slot, IPV4_TOTAL_LEN, total_len).ok_or(INTERNAL)?;
            set_u16(slot, IPV4_ID, first_id.wrapping_add(i as u16)).ok_or(INTERNAL)?;
            set_u16(slot, IPV4_CHECKSUM, 0).ok_or(INTERNAL)?;
            let ip_header = slot.get(..l4).ok_or(INTERNAL)?;
            let ip_checksum = !checksum(ip_header, 0);
            set_u16(slot, IPV4_CHECKSUM, ip_checksum).ok_or(INTERNAL)?;
        }

        let l4_len = seg_len - l4;
        if layout.tcp {
            let seq = first_seq.wrapping_add((i as u32).wrapping_mul(u32::from(hdr.gso_size)));
            set_u32(slot, l4 + TCP_SEQ, seq).ok_or(INTERNAL)?;
            let mut flags = tcp_flags;
            if i + 1 != segments {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i != 0 {
                flags &= !TCP_CWR;
            }
            *slot.get_mut(l4 + TCP_FLAGS).ok_or(INTERNAL)? = flags;
        } else {
            let udp_len = u16::try_from(l4_len).map_err(|_| INTERNAL)?;
            set_u16(slot, l4 + UDP_LENGTH, udp_len).ok_or(INTERNAL)?;
        }
        set_u16(slot, csum_field, 0).ok_or(INTERNAL)?;
        let l4_len_word = u32::try_from(l4_len).map_err(|_| INTERNAL)?;
        let pseudo = fold(sum(&l4_len_word.to_be_bytes(), pseudo_base));
        let transport = slot.get(l4..).ok_or(INTERNAL)?;
        let mut value = !checksum(transport, u32::from(pseudo));
        if value == 0 && !layout.tcp {
            value = 0xffff; // UDP: 0 would mean "no checksum"
        }
        set_u16(slot, csum_field, value).ok_or(INTERNAL)?;
    }
    Ok(segments)
}

/// Checks the super-packet's IP and transport headers against the virtio-net header.
fn check_layout(hdr: &VirtioNetHdr, base: u8, packet: &[u8]) -> Result<Layout, OffloadError> {
    if hdr.gso_size == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    let tcp = base != VirtioNetHdr::GSO_UDP_L4;
    let protocol = if tcp { PROTO_TCP } else { PROTO_UDP };
    let Some(&first) = packet.first() else {
        return Err(OffloadError::Truncated {
            what: "IP packet",
            needed: 1,
            got: 0,
        });
    };
    let version = first >> 4;
    let v6 = match (version, base) {
        (4, VirtioNetHdr::GSO_TCPV4 | VirtioNetHdr::GSO_UDP_L4) => false,
        (6, VirtioNetHdr::GSO_TCPV6 | VirtioNetHdr::GSO_UDP_L4) => true,
        _ => {
            return Err(OffloadError::IpVersionMismatch {
                version,
                gso_type: base,
            });
        }
    };
    let l4_offset = if v6 {
        check_ipv6(packet, protocol)?
    } else {
        check_ipv4(packet, protocol)?
    };
    if usize::from(hdr.csum_start) != l4_offset {
        return Err(OffloadError::BadCsumStart {
            csum_start: hdr.csum_start,
            l4_offset,
        });
    }
    let (l4_hdr_len, csum_offset) = if tcp {
        if packet.len() < l4_offset + TCP_MIN_LEN {
            return Err(OffloadError::Truncated {
                what: "TCP header",
                needed: l4_offset + TCP_MIN_LEN,
                got: packet.len(),
            });
        }
        let words = packet.get(l4_offset + TCP_DATA_OFFSET).ok_or(INTERNAL)? >> 4;
        let tcp_len = usize::from(words) * 4;
        if tcp_len < TCP_MIN_LEN {
            return Err(OffloadError::Malformed("TCP data offset below 5 words"));
        }
        (tcp_len, TCP_CHECKSUM)
    } else {
        (UDP_LEN, UDP_CHECKSUM)
    };
    if usize::from(hdr.csum_offset) != csum_offset {
        return Err(OffloadError::BadCsumOffset {
            csum_start: hdr.csum_start,
            csum_offset: hdr.csum_offset,
            len: packet.len(),
        });
    }
    let hdr_len = l4_offset + l4_hdr_len;
    if packet.len() < hdr_len {
        return Err(OffloadError::Truncated {
            what: if tcp {
                "TCP header with options"
            } else {
                "UDP header"
            },
            needed: hdr_len,
            got: packet.len(),
        });
    }
    Ok(Layout {
        v6,
        tcp,
        l4_offset,
        hdr_len,
    })
}

/// IPv4 header length of a segmentable IPv4 packet carrying `protocol`.
fn check_ipv4(packet: &[u8], protocol: u8) -> Result<usize, OffloadError> {
    if packet.len() < IPV4_MIN_LEN {
        return Err(OffloadError::Truncated {
            what: "IPv4 header",
            needed: IPV4_MIN_LEN,
            got: packet.len(),
        });
    }
    let ihl = usize::from(packet.first().ok_or(INTERNAL)? & 0x0f) * 4;
    if ihl < IPV4_MIN_LEN {
        return Err(OffloadError::Malformed("IPv4 header length below 5 words"));
    }
    if ihl > packet.len() {
        return Err(OffloadError::Truncated {
            what: "IPv4 header with options",
            needed: ihl,
            got: packet.len(),
        });
    }
    let total_len = usize::from(get_u16(packet, IPV4_TOTAL_LEN).ok_or(INTERNAL)?);
    if total_len != packet.len() {
        return Err(OffloadError::LengthMismatch {
            header: total_len,
            actual: packet.len(),
        });
    }
    if get_u16(packet, IPV4_FRAG).ok_or(INTERNAL)? & IPV4_FRAG_MASK != 0 {
        return Err(OffloadError::Malformed("IPv4 fragment in a GSO packet"));
    }
    if *packet.get(IPV4_PROTOCOL).ok_or(INTERNAL)? != protocol {
        return Err(OffloadError::Malformed(
            "IP protocol does not match the GSO type",
        ));
    }
    Ok(ihl)
}

/// Transport header offset of a segmentable IPv6 packet carrying `protocol`.
fn check_ipv6(packet: &[u8], protocol: u8) -> Result<usize, OffloadError> {
    if packet.len() < IPV6_LEN {
        return Err(OffloadError::Truncated {
            what: "IPv6 header",
            needed: IPV6_LEN,
            got: packet.len(),
        });
    }
    let header_len = usize::from(get_u16(packet, IPV6_PAYLOAD_LEN).ok_or(INTERNAL)?) + IPV6_LEN;
    if header_len != packet.len() {
        return Err(OffloadError::LengthMismatch {
            header: header_len,
            actual: packet.len(),
        });
    }
    match ipv6_transport(packet) {
        Ipv6Transport::Found {
            protocol: found,
            offset,
        } if found == protocol => Ok(offset),
        Ipv6Transport::Found { .. } => Err(OffloadError::Malformed(
            "IP protocol does not match the GSO type",
        )),
        Ipv6Transport::Unsupported => Err(OffloadError::Malformed(
            "IPv6 routing or fragment header in a GSO packet",
        )),
        Ipv6Transport::Malformed => Err(OffloadError::Malformed(
            "IPv6 extension headers run past the packet",
        )),
    }
}
