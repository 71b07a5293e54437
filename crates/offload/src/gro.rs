//! TCP receive coalescing (GRO) of decrypted packets before they are written to the TUN.
//!
//! Each pushed packet either extends the newest pending write of its TCP flow, when Linux
//! GRO would merge it there, or becomes a pending write of its own, unchanged. Only the
//! newest write of a flow is ever extended, so a flow's bytes reach the kernel in the
//! order they arrived.

use std::fmt;

use crate::checksum::{checksum, pseudo_header_checksum};
use crate::ip::{
    IPV4_ADDRS, IPV4_CHECKSUM, IPV4_FRAG, IPV4_FRAG_MASK, IPV4_FRAG_OFFSET_MASK, IPV4_ID,
    IPV4_MIN_LEN, IPV4_PROTOCOL, IPV4_TOTAL_LEN, IPV6_ADDRS, IPV6_LEN, IPV6_PAYLOAD_LEN,
    Ipv6Transport, PROTO_TCP, TCP_ACK, TCP_CHECKSUM, TCP_DATA_OFFSET, TCP_FLAGS, TCP_MIN_LEN,
    TCP_PSH, TCP_SEQ, get_u16, get_u32, ipv6_transport, set_u16,
};
use crate::vnet::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR_LEN, VirtioNetHdr};

/// Largest write a merged item can become: virtio-net header, IPv6 header and a full 65535
/// bytes of IPv6 payload (a merged IPv4 packet stops at 65535 bytes in all).
pub const MAX_GRO_WRITE_LEN: usize = VNET_HDR_LEN + IPV6_LEN + MAX_IP_LENGTH_FIELD;

/// What the IPv4 total length and IPv6 payload length fields can express.
const MAX_IP_LENGTH_FIELD: usize = 65535;

/// Counters since [`Gro::new`], for statistics and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroStats {
    /// Packets given to [`Gro::push`].
    pub packets: u64,
    /// Of those, packets appended to a pending write instead of opening one.
    pub coalesced: u64,
    /// Writes emitted by [`Gro::flush`].
    pub writes: u64,
    /// Packets dropped because they needed a new pending write while [`Gro::is_full`].
    pub dropped_full: u64,
}

/// TCP receive coalescing for writing to the TUN. Push decrypted packets, and
/// [`flush`](Gro::flush) at the end of each batch or as soon as [`is_full`](Gro::is_full).
///
/// Memory: at most [`Gro::MAX_PENDING`] buffers, each kept for reuse at up to
/// [`MAX_GRO_WRITE_LEN`] bytes of capacity (about 4 MiB in all); a buffer that had to grow
/// beyond that for one oversized unmerged packet is shrunk back at the next flush.
#[derive(Default)]
pub struct Gro {
    /// Pending writes first (`..pending`), then spare items whose buffers are reused.
    items: Vec<Item>,
    pending: usize,
    stats: GroStats,
}

impl fmt::Debug for Gro {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gro")
            .field("pending", &self.pending)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// One pending write.
#[derive(Default)]
struct Item {
    /// [`VNET_HDR_LEN`] bytes for the header (filled at flush), then the first packet
    /// followed by the payloads of the segments merged into it.
    buf: Vec<u8>,
    /// The TCP flow of the first packet, if it is TCP; a later packet of the flow may only
    /// extend the newest item of that flow.
    flow: Option<FlowKey>,
    /// Whether another segment may still be appended.
    open: bool,
    /// Whether the first packet's checksums were verified (done at the first merge only,
    /// so packets that never merge cost no checksum).
    verified: bool,
    v6: bool,
    /// IP header length (20 or 40: merged packets have no options or extension headers).
    l4_offset: usize,
    /// IP + TCP header length.
    hdr_len: usize,
    /// Payload length of the first segment: every merged segment but the last has it.
    gso_size: usize,
    segments: usize,
    /// Sequence number the next segment must have.
    next_seq: u32,
    /// IPv4 ID of the last segment; the next must have this + 1.
    last_id: u16,
}

impl Item {
    /// The packet (without the header space).
    fn packet(&self) -> &[u8] {
        self.buf.get(VNET_HDR_LEN..).unwrap_or_default()
    }
}

/// Addresses and ports of a TCP packet; with `v6` false only the first 8 address bytes
/// are used.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    v6: bool,
    addrs: [u8; 32],
    ports: [u8; 4],
}

/// A TCP packet that may start or join a merged write: IPv4 without options or fragments
/// or IPv6 without extension headers, lengths consistent, flags ACK or ACK+PSH, and some
/// payload. Its checksums are checked only when it actually merges.
struct Segment {
    v6: bool,
    l4_offset: usize,
    hdr_len: usize,
    seq: u32,
    flags: u8,
    payload_len: usize,
    ip_id: u16,
}

impl Gro {
    /// Writes held before the caller must flush.
    pub const MAX_PENDING: usize = 64;

    /// An empty coalescer; buffers are allocated as they are first needed and then reused.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one decrypted IP packet (any bytes). It is merged into the newest pending
    /// write of its TCP flow when Linux GRO would: same addresses and ports; sequence
    /// number the next expected; IP fields identical except length, ID and checksum
    /// (IPv4: ID = previous + 1, no options, not a fragment, same TOS, TTL and DF; IPv6: no
    /// extension headers, same traffic class, flow label and hop limit); same ACK number,
    /// window, urgent pointer and TCP option bytes; flags ACK only, or ACK+PSH (which closes
    /// the write); payload length equal to the write's first one (a shorter one may come
    /// last, and closes the write); valid IPv4 header and TCP checksums; and the result
    /// within 65535 bytes (IPv4 total length, IPv6 payload length). Anything else becomes a
    /// pending write of its own, unchanged.
    ///
    /// When [`is_full`](Self::is_full), a packet that cannot be merged is dropped (and
    /// counted in [`GroStats::dropped_full`]): callers flush before that happens.
    pub fn push(&mut self, packet: &[u8]) {
        self.stats.packets = self.stats.packets.wrapping_add(1);
        let (flow, segment) = classify(packet);
        if let (Some(flow), Some(segment)) = (flow, &segment) {
            let pending = self.items.get_mut(..self.pending).unwrap_or_default();
            if let Some(item) = pending
                .iter_mut()
                .rev()
                .find(|item| item.flow == Some(flow))
                && try_merge(item, packet, segment)
            {
                self.stats.coalesced = self.stats.coalesced.wrapping_add(1);
                return;
            }
        }
        self.open_item(packet, flow, segment.as_ref());
    }

    /// Whether [`MAX_PENDING`](Self::MAX_PENDING) writes are pending.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.pending >= Self::MAX_PENDING
    }

    /// Whether no write is pending.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Counters since [`Gro::new`].
    #[must_use]
    pub fn stats(&self) -> GroStats {
        self.stats
    }

    /// Emits each pending write as [`VNET_HDR_LEN`] bytes of header followed by the packet,
    /// in the order the writes were opened, then clears them (keeping their buffers).
    ///
    /// A merged write (two or more segments) gets `gso_type` TCPV4/TCPV6, `gso_size` = the
    /// first segment's payload length, `hdr_len` = IP + TCP header length, `NEEDS_CSUM`
    /// with `csum_start` = IP header length and `csum_offset` = 16; its TCP checksum field
    /// holds the folded, not complemented, pseudo-header sum over the merged length, and
    /// its IPv4 total length and header checksum (IPv6 payload length) are updated. PSH is
    /// set if the last segment had it. A single packet gets an all-zero header and is
    /// byte for byte what was pushed.
    pub fn flush(&mut self, mut write: impl FnMut(&[u8])) {
        let pending = self.items.get_mut(..self.pending).unwrap_or_default();
        for item in pending {
            let ready = if item.segments >= 2 {
                finish_merged(item).is_some()
            } else {
                VirtioNetHdr::default().write_to(&mut item.buf).is_ok()
            };
            if ready {
                write(&item.buf);
                self.stats.writes = self.stats.writes.wrapping_add(1);
            }
            if item.buf.capacity() > MAX_GRO_WRITE_LEN {
                item.buf.clear();
                item.buf.shrink_to(MAX_GRO_WRITE_LEN);
            }
        }
        self.pending = 0;
    }

    /// Makes `packet` a pending write of its own, reusing a spare item if there is one.
    fn open_item(&mut self, packet: &[u8], flow: Option<FlowKey>, segment: Option<&Segment>) {
        if self.is_full() {
            self.stats.dropped_full = self.stats.dropped_full.wrapping_add(1);
            return;
        }
        if self.items.len() <= self.pending {
            self.items.push(Item::default());
        }
        let Some(item) = self.items.get_mut(self.pending) else {
            return;
        };
        self.pending += 1;
        item.buf.clear();
        item.buf.extend_from_slice(&[0; VNET_HDR_LEN]);
        item.buf.extend_from_slice(packet);
        item.flow = flow;
        item.verified = false;
        item.segments = 1;
        match segment {
            Some(segment) => {
                // A PSH (or a later check failing) closes it; otherwise later segments may join.
                item.open = segment.flags == TCP_ACK;
                item.v6 = segment.v6;
                item.l4_offset = segment.l4_offset;
                item.hdr_len = segment.hdr_len;
                item.gso_size = segment.payload_len;
                // Sequence numbers are modular: truncating the length is the intended wrap.
                item.next_seq = segment.seq.wrapping_add(segment.payload_len as u32);
                item.last_id = segment.ip_id;
            }
            None => item.open = false,
        }
    }
}

/// The packet's TCP flow, if it is TCP, and whether it is a mergeable segment.
fn classify(packet: &[u8]) -> (Option<FlowKey>, Option<Segment>) {
    let Some(&first) = packet.first() else {
        return (None, None);
    };
    let (v6, l4_offset, ip_ok) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            let frag = get_u16(packet, IPV4_FRAG).unwrap_or(u16::MAX);
            // A fragment with offset 0 still carries the ports; later ones do not.
            if ihl < IPV4_MIN_LEN
                || packet.get(IPV4_PROTOCOL) != Some(&PROTO_TCP)
                || frag & IPV4_FRAG_OFFSET_MASK != 0
            {
                return (None, None);
            }
            let total_len = get_u16(packet, IPV4_TOTAL_LEN).map(usize::from);
            let ok = ihl == IPV4_MIN_LEN
                && frag & IPV4_FRAG_MASK == 0
                && total_len == Some(packet.len());
            (false, ihl, ok)
        }
        6 => {
            let Ipv6Transport::Found {
                protocol: PROTO_TCP,
                offset,
            } = ipv6_transport(packet)
            else {
                return (None, None);
            };
            let payload_len = get_u16(packet, IPV6_PAYLOAD_LEN).map(usize::from);
            // Directly after the fixed header: no extension headers.
            let ok =
                offset == IPV6_LEN && payload_len.map(|len| len + IPV6_LEN) == Some(packet.len());
            (true, offset, ok)
        }
        _ => return (None, None),
    };

    let mut key = FlowKey {
        v6,
        addrs: [0; 32],
        ports: [0; 4],
    };
    let addrs = if v6 {
        packet.get(IPV6_ADDRS..IPV6_ADDRS + 32)
    } else {
        packet.get(IPV4_ADDRS..IPV4_ADDRS + 8)
    };
    let (Some(addrs), Some(ports)) = (addrs, packet.get(l4_offset..l4_offset + 4)) else {
        return (None, None);
    };
    for (slot, byte) in key.addrs.iter_mut().zip(addrs) {
        *slot = *byte;
    }
    key.ports.copy_from_slice(ports);
    if !ip_ok {
        return (Some(key), None);
    }

    let tcp_len = packet
        .get(l4_offset + TCP_DATA_OFFSET)
        .map_or(0, |byte| usize::from(byte >> 4) * 4);
    let hdr_len = l4_offset + tcp_len;
    let flags = packet.get(l4_offset + TCP_FLAGS).copied().unwrap_or(0);
    let seq = get_u32(packet, l4_offset + TCP_SEQ);
    let segment = match seq {
        Some(seq)
            if tcp_len >= TCP_MIN_LEN
                && hdr_len < packet.len()
                && (flags == TCP_ACK || flags == TCP_ACK | TCP_PSH) =>
        {
            Some(Segment {
                v6,
                l4_offset,
                hdr_len,
                seq,
                flags,
                payload_len: packet.len() - hdr_len,
                ip_id: if v6 {
                    0
                } else {
                    get_u16(packet, IPV4_ID).unwrap_or(0)
                },
            })
        }
        _ => None,
    };
    (Some(key), segment)
}

/// Appends `packet` (a [`Segment`] of `item`'s flow) to `item` if Linux GRO would.
fn try_merge(item: &mut Item, packet: &[u8], segment: &Segment) -> bool {
    if !item.open
        || segment.v6 != item.v6
        || segment.hdr_len != item.hdr_len
        || segment.seq != item.next_seq
        || segment.payload_len > item.gso_size
        || (!item.v6 && segment.ip_id != item.last_id.wrapping_add(1))
    {
        return false;
    }
    let merged_len = item.packet().len() + segment.payload_len;
    let length_field = if item.v6 {
        merged_len - IPV6_LEN
    } else {
        merged_len
    };
    if length_field > MAX_IP_LENGTH_FIELD || !same_headers(item, packet) {
        return false;
    }
    if !item.verified {
        if !checksums_valid(item.packet(), item.v6, item.l4_offset) {
            item.open = false;
            return false;
        }
        item.verified = true;
    }
    let Some(payload) = packet.get(item.hdr_len..) else {
        return false;
    };
    if !checksums_valid(packet, item.v6, item.l4_offset) {
        return false;
    }

    if item.segments == 1 {
        // Grow once to the largest merged write instead of doubling past it.
        item.buf
            .reserve_exact(MAX_GRO_WRITE_LEN.saturating_sub(item.buf.len()));
    }
    item.buf.extend_from_slice(payload);
    item.segments += 1;
    item.next_seq = item.next_seq.wrapping_add(segment.payload_len as u32);
    item.last_id = segment.ip_id;
    if segment.flags & TCP_PSH != 0 {
        // Nothing may follow a PSH; the merged header carries it so that segmenting the
        // write again puts it back on the last segment.
        if let Some(flags) = item.buf.get_mut(VNET_HDR_LEN + item.l4_offset + TCP_FLAGS) {
            *flags |= TCP_PSH;
        }
        item.open = false;
    }
    if segment.payload_len < item.gso_size {
        item.open = false;
    }
    true
}

/// Whether every header byte of `packet` that must match does match `item`'s first
/// segment: all but the lengths, IPv4 ID and checksums, sequence number and flags (checked
/// elsewhere). Addresses and ports are the same already (same flow).
fn same_headers(item: &Item, packet: &[u8]) -> bool {
    let first = item.packet();
    let same = |range: std::ops::Range<usize>| matches!((first.get(range.clone()), packet.get(range)), (Some(a), Some(b)) if a == b);
    let ip_same = if item.v6 {
        // Version, traffic class, flow label; next header, hop limit.
        same(0..4) && same(6..8)
    } else {
        // Version, IHL, TOS; flags (DF) and fragment offset, TTL, protocol.
        same(0..2) && same(6..10)
    };
    let l4 = item.l4_offset;
    // ACK number and data offset; window; urgent pointer and options.
    ip_same
        && same(l4 + 8..l4 + TCP_FLAGS)
        && same(l4 + 14..l4 + TCP_CHECKSUM)
        && same(l4 + 18..item.hdr_len)
}

/// Whether a candidate segment's IPv4 header checksum and TCP checksum verify, and hold
/// the value a sender computes (not the equivalent `0xffff`, which no correct TCP or IPv4
/// checksum needs: a sum over a non-zero protocol or version byte is never zero), so that
/// segmenting the merged write again reproduces the segment byte for byte.
fn checksums_valid(packet: &[u8], v6: bool, l4_offset: usize) -> bool {
    let addrs = if v6 {
        packet.get(IPV6_ADDRS..IPV6_ADDRS + 32)
    } else {
        let header_ok = packet
            .get(..l4_offset)
            .is_some_and(|header| checksum(header, 0) == 0xffff)
            && get_u16(packet, IPV4_CHECKSUM) != Some(0xffff);
        if !header_ok {
            return false;
        }
        packet.get(IPV4_ADDRS..IPV4_ADDRS + 8)
    };
    let (Some(addrs), Some(transport)) = (addrs, packet.get(l4_offset..)) else {
        return false;
    };
    let Ok(l4_len) = u32::try_from(transport.len()) else {
        return false;
    };
    let pseudo = pseudo_header_checksum(
        addrs.get(..addrs.len() / 2).unwrap_or_default(),
        addrs.get(addrs.len() / 2..).unwrap_or_default(),
        PROTO_TCP,
        l4_len,
    );
    checksum(transport, u32::from(pseudo)) == 0xffff
        && get_u16(transport, TCP_CHECKSUM) != Some(0xffff)
}

/// Fills in the header and length and checksum fields of a merged write.
fn finish_merged(item: &mut Item) -> Option<()> {
    let l4 = item.l4_offset;
    let packet = item.buf.get_mut(VNET_HDR_LEN..)?;
    let len = packet.len();
    let (gso_type, addrs) = if item.v6 {
        set_u16(
            packet,
            IPV6_PAYLOAD_LEN,
            u16::try_from(len - IPV6_LEN).ok()?,
        )?;
        (VirtioNetHdr::GSO_TCPV6, IPV6_ADDRS..IPV6_ADDRS + 32)
    } else {
        set_u16(packet, IPV4_TOTAL_LEN, u16::try_from(len).ok()?)?;
        set_u16(packet, IPV4_CHECKSUM, 0)?;
        let header_sum = checksum(packet.get(..l4)?, 0);
        set_u16(packet, IPV4_CHECKSUM, !header_sum)?;
        (VirtioNetHdr::GSO_TCPV4, IPV4_ADDRS..IPV4_ADDRS + 8)
    };
    let addrs = packet.get(addrs)?;
    let half = addrs.len() / 2;
    let l4_len = u32::try_from(len - l4).ok()?;
    // The kernel completes the checksum from csum_start on, over this pseudo-header sum.
    let partial = pseudo_header_checksum(addrs.get(..half)?, addrs.get(half..)?, PROTO_TCP, l4_len);
    set_u16(packet, l4 + TCP_CHECKSUM, partial)?;
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        hdr_len: u16::try_from(item.hdr_len).ok()?,
        gso_size: u16::try_from(item.gso_size).ok()?,
        csum_start: u16::try_from(l4).ok()?,
        csum_offset: u16::try_from(TCP_CHECKSUM).ok()?,
    };
    hdr.write_to(&mut item.buf).ok()
}
