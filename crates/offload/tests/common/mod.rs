//! Shared by the integration tests: an RFC 1071 reference summed one 16-bit word at a
//! time, and packet builders that compute every length and checksum with it, so the
//! crate's output is compared against packets built independently of its code.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs
)]

use wg_offload::{VNET_HDR_LEN, VirtioNetHdr};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

/// RFC 1071 §1 as written: the concatenation of `parts` as big-endian 16-bit words (odd
/// last byte padded with zero), summed in a wide accumulator, carries folded at the end.
/// Not complemented.
pub fn ref_sum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut acc: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let hi = u64::from(bytes[i]) << 8;
        let lo = if i + 1 < bytes.len() {
            u64::from(bytes[i + 1])
        } else {
            0
        };
        acc += hi | lo;
        i += 2;
    }
    while acc > 0xffff {
        acc = (acc >> 16) + (acc & 0xffff);
    }
    acc as u16
}

pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// IP header length (IPv4 IHL, or IPv6 fixed header plus hop-by-hop/destination options).
pub fn l3_len(p: &[u8]) -> usize {
    if p[0] >> 4 == 4 {
        usize::from(p[0] & 0x0f) * 4
    } else {
        let mut next = p[6];
        let mut off = 40;
        while next == 0 || next == 60 {
            next = p[off];
            off += (usize::from(p[off + 1]) + 1) * 8;
        }
        off
    }
}

/// Transport protocol number (after IPv6 options, if any).
pub fn l4_protocol(p: &[u8]) -> u8 {
    if p[0] >> 4 == 4 {
        p[9]
    } else {
        let mut next = p[6];
        let mut off = 40;
        while next == 0 || next == 60 {
            next = p[off];
            off += (usize::from(p[off + 1]) + 1) * 8;
        }
        next
    }
}

/// The pseudo-header bytes (RFC 793 / RFC 8200 §8.1) for a transport length.
pub fn pseudo_header(p: &[u8], protocol: u8, l4_len: usize) -> Vec<u8> {
    let mut ph = Vec::new();
    if p[0] >> 4 == 4 {
        ph.extend_from_slice(&p[12..20]);
        ph.extend_from_slice(&[0, protocol]);
        ph.extend_from_slice(&(l4_len as u16).to_be_bytes());
    } else {
        ph.extend_from_slice(&p[8..40]);
        ph.extend_from_slice(&(l4_len as u32).to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, protocol]);
    }
    ph
}

/// Whether the IPv4 header checksum verifies (true for IPv6, which has none).
pub fn ipv4_header_ok(p: &[u8]) -> bool {
    p[0] >> 4 != 4 || ref_sum(&[&p[..l3_len(p)]]) == 0xffff
}

/// Whether the TCP or UDP checksum verifies over pseudo-header, header and payload.
pub fn l4_checksum_ok(p: &[u8]) -> bool {
    let l4 = l3_len(p);
    let proto = l4_protocol(p);
    ref_sum(&[&pseudo_header(p, proto, p.len() - l4), &p[l4..]]) == 0xffff
}

/// A TCP/IP packet description; `packet` builds it with correct lengths and checksums.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub v6: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub urgent: u16,
    /// TCP options (padded with NOPs to a multiple of 4 by the builder's caller).
    pub options: Vec<u8>,
    /// IPv4 options (a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// IPv6: insert an 8-byte hop-by-hop options header.
    pub hop_by_hop: bool,
    pub ip_id: u16,
    /// IPv4 flags and fragment offset word (0x4000 = DF).
    pub frag: u16,
    pub ttl: u8,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    pub flow_label: u32,
}

impl Default for Tcp {
    fn default() -> Self {
        let mut src = [0; 16];
        let mut dst = [0; 16];
        src[..4].copy_from_slice(&[10, 0, 0, 1]);
        dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        Self {
            v6: false,
            src,
            dst,
            sport: 40000,
            dport: 5201,
            seq: 1_000_000,
            ack: 77,
            flags: ACK,
            window: 502,
            urgent: 0,
            options: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2], // NOP NOP timestamps
            ip_options: Vec::new(),
            hop_by_hop: false,
            ip_id: 0x1234,
            frag: 0x4000,
            ttl: 64,
            tos: 0,
            flow_label: 0,
        }
    }
}

impl Tcp {
    pub fn v6() -> Self {
        let mut t = Self {
            v6: true,
            ..Self::default()
        };
        t.src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        t.dst = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        t.flow_label = 0x12345;
        t
    }

    pub fn ip_header_len(&self) -> usize {
        if self.v6 {
            40 + if self.hop_by_hop { 8 } else { 0 }
        } else {
            20 + self.ip_options.len()
        }
    }

    pub fn tcp_header_len(&self) -> usize {
        20 + self.options.len()
    }

    /// The packet with `payload`, every length and checksum filled in by the reference.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let l3 = self.ip_header_len();
        let th = self.tcp_header_len();
        let total = l3 + th + payload.len();
        let mut p = Vec::with_capacity(total);
        if self.v6 {
            let word = (6u32 << 28) | (u32::from(self.tos) << 20) | (self.flow_label & 0xfffff);
            p.extend_from_slice(&word.to_be_bytes());
            p.extend_from_slice(&((total - 40) as u16).to_be_bytes());
            p.push(if self.hop_by_hop { 0 } else { 6 });
            p.push(self.ttl);
            p.extend_from_slice(&self.src);
            p.extend_from_slice(&self.dst);
            if self.hop_by_hop {
                p.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // PadN
            }
        } else {
            p.push(0x40 | (l3 / 4) as u8);
            p.push(self.tos);
            p.extend_from_slice(&(total as u16).to_be_bytes());
            p.extend_from_slice(&self.ip_id.to_be_bytes());
            p.extend_from_slice(&self.frag.to_be_bytes());
            p.push(self.ttl);
            p.push(6);
            p.extend_from_slice(&[0, 0]);
            p.extend_from_slice(&self.src[..4]);
            p.extend_from_slice(&self.dst[..4]);
            p.extend_from_slice(&self.ip_options);
            let c = !ref_sum(&[&p[..l3]]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        p.extend_from_slice(&self.sport.to_be_bytes());
        p.extend_from_slice(&self.dport.to_be_bytes());
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.ack.to_be_bytes());
        p.push(((th / 4) as u8) << 4);
        p.push(self.flags);
        p.extend_from_slice(&self.window.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&self.urgent.to_be_bytes());
        p.extend_from_slice(&self.options);
        p.extend_from_slice(payload);
        let c = !ref_sum(&[&pseudo_header(&p, 6, total - l3), &p[l3..]]);
        p[l3 + 16..l3 + 18].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// What the kernel hands a TUN reader for a TSO super-packet: NEEDS_CSUM with the
    /// pseudo-header sum in the checksum field, the IPv4 header checksum left at zero.
    pub fn tso_read(&self, payload: &[u8], gso_size: u16) -> Vec<u8> {
        let mut p = self.packet(payload);
        let l3 = self.ip_header_len();
        if !self.v6 {
            p[10..12].copy_from_slice(&[0, 0]);
        }
        let partial = ref_sum(&[&pseudo_header(&p, 6, p.len() - l3)]);
        p[l3 + 16..l3 + 18].copy_from_slice(&partial.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: wg_offload::VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: if self.v6 {
                VirtioNetHdr::GSO_TCPV6
            } else {
                VirtioNetHdr::GSO_TCPV4
            },
            hdr_len: (l3 + self.tcp_header_len()) as u16,
            gso_size,
            csum_start: l3 as u16,
            csum_offset: 16,
        };
        let mut read = vec![0; VNET_HDR_LEN];
        hdr.write_to(&mut read).unwrap();
        read.extend_from_slice(&p);
        read
    }

    /// The segments Linux would cut the super-packet into, built one by one.
    pub fn expected_segments(&self, payload: &[u8], gso_size: usize) -> Vec<Vec<u8>> {
        let chunks: Vec<&[u8]> = if payload.is_empty() {
            vec![&[][..]]
        } else {
            payload.chunks(gso_size).collect()
        };
        let n = chunks.len();
        chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| {
                let mut seg = self.clone();
                seg.seq = self.seq.wrapping_add((i * gso_size) as u32);
                seg.ip_id = self.ip_id.wrapping_add(i as u16);
                if i + 1 != n {
                    seg.flags &= !(FIN | PSH);
                }
                if i != 0 {
                    seg.flags &= !CWR;
                }
                seg.packet(chunk)
            })
            .collect()
    }
}

/// A UDP/IP packet with correct lengths and checksums (`id` is the IPv4 ID).
pub fn udp_packet(v6: bool, id: u16, payload: &[u8]) -> Vec<u8> {
    let l3 = if v6 { 40 } else { 20 };
    let total = l3 + 8 + payload.len();
    let mut p = Vec::new();
    if v6 {
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&((total - 40) as u16).to_be_bytes());
        p.extend_from_slice(&[17, 64]);
        p.extend_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&[0, 0, 64, 17, 0, 0, 192, 168, 1, 1, 192, 168, 1, 2]);
        let c = !ref_sum(&[&p[..20]]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    p.extend_from_slice(&4433u16.to_be_bytes());
    p.extend_from_slice(&443u16.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let mut c = !ref_sum(&[&pseudo_header(&p, 17, total - l3), &p[l3..]]);
    if c == 0 {
        c = 0xffff;
    }
    p[l3 + 6..l3 + 8].copy_from_slice(&c.to_be_bytes());
    p
}

/// A USO read: the whole datagram in one packet, NEEDS_CSUM with the pseudo-header sum.
pub fn uso_read(v6: bool, id: u16, payload: &[u8], gso_size: u16) -> Vec<u8> {
    let mut p = udp_packet(v6, id, payload);
    let l3 = if v6 { 40 } else { 20 };
    let partial = ref_sum(&[&pseudo_header(&p, 17, p.len() - l3)]);
    p[l3 + 6..l3 + 8].copy_from_slice(&partial.to_be_bytes());
    let hdr = VirtioNetHdr {
        flags: wg_offload::VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VirtioNetHdr::GSO_UDP_L4,
        hdr_len: (l3 + 8) as u16,
        gso_size,
        csum_start: l3 as u16,
        csum_offset: 6,
    };
    let mut read = hdr.to_bytes().to_vec();
    read.extend_from_slice(&p);
    read
}

/// The UDP datagrams USO must produce: one per `gso_size` piece, IPv4 ID incremented.
pub fn expected_udp_segments(v6: bool, id: u16, payload: &[u8], gso_size: usize) -> Vec<Vec<u8>> {
    if payload.is_empty() {
        return vec![udp_packet(v6, id, payload)];
    }
    payload
        .chunks(gso_size)
        .enumerate()
        .map(|(i, chunk)| udp_packet(v6, id.wrapping_add(i as u16), chunk))
        .collect()
}

/// A sink that holds at most `limit` segments.
pub struct BoundedSink {
    pub limit: usize,
    pub segments: Vec<Vec<u8>>,
}

impl BoundedSink {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            segments: Vec::new(),
        }
    }
}

impl wg_offload::SegmentSink for BoundedSink {
    fn next_segment(&mut self, len: usize) -> Option<&mut [u8]> {
        if self.segments.len() == self.limit {
            return None;
        }
        // Garbage in the slot: split must overwrite all of it.
        self.segments.push(vec![0xa5; len]);
        self.segments.last_mut().map(Vec::as_mut_slice)
    }
}

/// Splits one read into an unbounded sink.
pub fn split_all(read: &[u8]) -> Result<Vec<Vec<u8>>, wg_offload::OffloadError> {
    let mut sink = BoundedSink::new(usize::MAX);
    let n = wg_offload::split(read, &mut sink)?;
    assert_eq!(
        n,
        sink.segments.len(),
        "count returned differs from segments written"
    );
    Ok(sink.segments)
}

/// Pushes all packets into a fresh `Gro` and returns the flushed writes.
pub fn gro_writes(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut gro = wg_offload::Gro::new();
    for p in packets {
        gro.push(p);
    }
    let mut out = Vec::new();
    gro.flush(|w| out.push(w.to_vec()));
    assert!(gro.is_empty());
    out
}
