//! Just enough IPv4/IPv6 header reading for cryptokey routing: the version, the source and
//! destination addresses, and the length the header claims (to strip WireGuard's padding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What the router needs from an inner IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpHeader {
    pub(crate) source: IpAddr,
    pub(crate) destination: IpAddr,
    /// Header plus payload, as the header states it.
    pub(crate) total_len: usize,
}

const IPV4_HEADER_MIN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;

fn array<const N: usize>(packet: &[u8], at: usize) -> Option<[u8; N]> {
    packet.get(at..at + N)?.try_into().ok()
}

/// Reads the header of an IPv4 or IPv6 packet. `None` for anything else, for a truncated
/// header, or when the stated length exceeds the bytes present.
pub(crate) fn parse(packet: &[u8]) -> Option<IpHeader> {
    let header = match packet.first()? >> 4 {
        4 => {
            let total = u16::from_be_bytes(array(packet, 2)?);
            IpHeader {
                source: Ipv4Addr::from(array::<4>(packet, 12)?).into(),
                destination: Ipv4Addr::from(array::<4>(packet, 16)?).into(),
                total_len: usize::from(total),
            }
        }
        6 => {
            let payload = u16::from_be_bytes(array(packet, 4)?);
            IpHeader {
                source: Ipv6Addr::from(array::<16>(packet, 8)?).into(),
                destination: Ipv6Addr::from(array::<16>(packet, 24)?).into(),
                total_len: IPV6_HEADER_LEN + usize::from(payload),
            }
        }
        _ => return None,
    };
    let min = if header.source.is_ipv4() {
        IPV4_HEADER_MIN
    } else {
        IPV6_HEADER_LEN
    };
    (header.total_len >= min && header.total_len <= packet.len()).then_some(header)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal IPv4 packet from `src` to `dst` with `payload_len` bytes of payload.
    pub(crate) fn ipv4(src: [u8; 4], dst: [u8; 4], payload_len: usize) -> Vec<u8> {
        let total = 20 + payload_len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    /// A minimal IPv6 packet.
    pub(crate) fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, payload_len: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload_len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&u16::try_from(payload_len).unwrap().to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p
    }

    #[test]
    fn reads_ipv4_and_ipv6_headers() {
        let v4 = ipv4([10, 0, 0, 1], [10, 0, 0, 2], 8);
        let h = parse(&v4).unwrap();
        assert_eq!(h.source, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(h.destination, IpAddr::from([10, 0, 0, 2]));
        assert_eq!(h.total_len, 28);
        let (a, b) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let h = parse(&ipv6(a, b, 3)).unwrap();
        assert_eq!(
            (h.source, h.destination, h.total_len),
            (a.into(), b.into(), 43)
        );
    }

    #[test]
    fn padding_after_the_stated_length_is_allowed_but_truncation_is_not() {
        let mut p = ipv4([1, 1, 1, 1], [2, 2, 2, 2], 5);
        p.extend_from_slice(&[0; 7]);
        assert_eq!(parse(&p).unwrap().total_len, 25);
        assert_eq!(parse(&p[..24]), None);
        assert_eq!(parse(&[0x45; 19]), None);
        assert_eq!(parse(&[0x10; 60]), None);
        assert_eq!(parse(&[]), None);
    }
}
