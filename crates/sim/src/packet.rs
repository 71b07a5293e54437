//! The inner packets the simulated applications send: a minimal IPv4 header and an 8-byte
//! payload identifier, so a receiver can tell exactly which packet arrived.

use std::net::Ipv4Addr;

/// IPv4 header length (no options).
const IPV4_HEADER_LEN: usize = 20;
/// IP protocol number reserved for experimentation (RFC 3692).
const PROTOCOL_EXPERIMENTAL: u8 = 253;
/// Length of every simulated inner packet: the header and a big-endian `u64` id.
pub const INNER_PACKET_LEN: usize = IPV4_HEADER_LEN + 8;

/// An IPv4 packet from `src` to `dst` whose payload is `payload_id`, big-endian.
pub fn inner_packet(src: Ipv4Addr, dst: Ipv4Addr, payload_id: u64) -> [u8; INNER_PACKET_LEN] {
    let mut p = [0u8; INNER_PACKET_LEN];
    p[0] = 0x45; // version 4, 5 words of header
    p[2..4].copy_from_slice(&(INNER_PACKET_LEN as u16).to_be_bytes());
    p[8] = 64; // TTL
    p[9] = PROTOCOL_EXPERIMENTAL;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let checksum = header_checksum(&p[..IPV4_HEADER_LEN]);
    p[10..12].copy_from_slice(&checksum.to_be_bytes());
    p[IPV4_HEADER_LEN..].copy_from_slice(&payload_id.to_be_bytes());
    p
}

/// The payload id of a packet made by [`inner_packet`], or `None` for anything else
/// (including a packet whose header checksum is wrong).
pub fn payload_id(packet: &[u8]) -> Option<u64> {
    let header = packet.get(..IPV4_HEADER_LEN)?;
    if packet.len() != INNER_PACKET_LEN
        || header.first() != Some(&0x45)
        || header.get(9) != Some(&PROTOCOL_EXPERIMENTAL)
        || header_checksum(header) != 0
    {
        return None;
    }
    let id: [u8; 8] = packet.get(IPV4_HEADER_LEN..)?.try_into().ok()?;
    Some(u64::from_be_bytes(id))
}

/// The Internet checksum of an IPv4 header (0 when the header's own checksum is right).
fn header_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_id_round_trips_and_rejects_corruption() {
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        let mut p = inner_packet(src, dst, 0xdead_beef_0042);
        assert_eq!(payload_id(&p), Some(0xdead_beef_0042));
        p[15] ^= 1;
        assert_eq!(payload_id(&p), None);
        assert_eq!(payload_id(&p[..27]), None);
    }
}
