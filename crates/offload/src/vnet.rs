//! `struct virtio_net_hdr` (Linux `include/uapi/linux/virtio_net.h`), as the TUN device
//! prepends it to every read and expects it before every write with `IFF_VNET_HDR`.

use crate::OffloadError;

/// Length of `struct virtio_net_hdr` (without the `num_buffers` of the mergeable variant).
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the checksum from `csum_start` to the end of the packet is still to be
/// completed and stored at `csum_start + csum_offset`; the field holds the pseudo-header sum.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum has been validated (only ever set on reads).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// The virtio-net header. On a TUN device its multi-byte fields are in native byte order,
/// which on every Linux target this crate runs on is little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*` bits.
    pub flags: u8,
    /// One of the `GSO_*` constants, optionally with [`VirtioNetHdr::GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers up to and including the transport header (a hint only: the
    /// kernel may set it to the whole first packet when forwarding).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Offset of the first byte the checksum covers (the transport header).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start` (16 for TCP, 6 for UDP).
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// Not a GSO packet.
    pub const GSO_NONE: u8 = 0;
    /// TCP over IPv4 segmentation (TSO).
    pub const GSO_TCPV4: u8 = 1;
    /// UDP fragmentation offload (UFO); never requested, so never segmented here.
    pub const GSO_UDP: u8 = 3;
    /// TCP over IPv6 segmentation (TSO).
    pub const GSO_TCPV6: u8 = 4;
    /// UDP segmentation (USO), IPv4 or IPv6.
    pub const GSO_UDP_L4: u8 = 5;
    /// Bit added to a TCP GSO type when the packet has CWR set (TCP ECN).
    pub const GSO_ECN: u8 = 0x80;

    /// Parses the first [`VNET_HDR_LEN`] bytes of `bytes` (little-endian fields).
    pub fn parse(bytes: &[u8]) -> Result<Self, OffloadError> {
        let Some(&[flags, gso_type, a, b, c, d, e, f, g, h]) = bytes.first_chunk::<VNET_HDR_LEN>()
        else {
            return Err(OffloadError::Truncated {
                what: "virtio-net header",
                needed: VNET_HDR_LEN,
                got: bytes.len(),
            });
        };
        Ok(Self {
            flags,
            gso_type,
            hdr_len: u16::from_le_bytes([a, b]),
            gso_size: u16::from_le_bytes([c, d]),
            csum_start: u16::from_le_bytes([e, f]),
            csum_offset: u16::from_le_bytes([g, h]),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `out`.
    pub fn write_to(&self, out: &mut [u8]) -> Result<(), OffloadError> {
        let got = out.len();
        let Some(slot) = out.first_chunk_mut::<VNET_HDR_LEN>() else {
            return Err(OffloadError::Truncated {
                what: "virtio-net header",
                needed: VNET_HDR_LEN,
                got,
            });
        };
        *slot = self.to_bytes();
        Ok(())
    }

    /// The header's [`VNET_HDR_LEN`] bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let [a, b] = self.hdr_len.to_le_bytes();
        let [c, d] = self.gso_size.to_le_bytes();
        let [e, f] = self.csum_start.to_le_bytes();
        let [g, h] = self.csum_offset.to_le_bytes();
        [self.flags, self.gso_type, a, b, c, d, e, f, g, h]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_write_are_inverse_and_little_endian() {
        let bytes = [
            1, 0x81, 0x36, 0x00, 0xb4, 0x05, 0x14, 0x00, 0x10, 0x00, 0xee,
        ];
        let hdr = VirtioNetHdr::parse(&bytes).unwrap();
        assert_eq!(
            hdr,
            VirtioNetHdr {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                gso_type: VirtioNetHdr::GSO_TCPV4 | VirtioNetHdr::GSO_ECN,
                hdr_len: 54,
                gso_size: 1460,
                csum_start: 20,
                csum_offset: 16,
            }
        );
        let mut out = [0xaa; 11];
        hdr.write_to(&mut out).unwrap();
        assert_eq!(out[..10], bytes[..10]);
        assert_eq!(out[10], 0xaa, "wrote past the header");
    }

    #[test]
    fn short_buffers_are_errors() {
        assert!(matches!(
            VirtioNetHdr::parse(&[0; 9]),
            Err(OffloadError::Truncated {
                needed: 10,
                got: 9,
                ..
            })
        ));
        assert!(VirtioNetHdr::default().write_to(&mut [0; 9]).is_err());
    }
}
