//! Fuzzes `wg_offload::split`, the TUN read path: any virtio-net header and packet, into a
//! sink of at most 64 segments. It must never panic; what it accepts must come out as
//! segments whose lengths add up and whose checksums verify, none longer than the read.
//!
//! Input: one control byte, then the read. Control bit 0 asks the target to make the IP
//! length field, `csum_start` and `csum_offset` consistent first, so that segmentation is
//! reached without the fuzzer having to guess three related fields at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wg_offload::{
    OffloadError, SegmentSink, VNET_HDR_LEN, VirtioNetHdr, checksum, pseudo_header_checksum, split,
};

/// A data-plane-like sink: a fixed number of slots.
struct Bounded(Vec<Vec<u8>>);

impl SegmentSink for Bounded {
    fn next_segment(&mut self, len: usize) -> Option<&mut [u8]> {
        if self.0.len() == 64 {
            return None;
        }
        self.0.push(vec![0xa5; len]);
        self.0.last_mut().map(Vec::as_mut_slice)
    }
}

/// Makes the IP length field and the checksum location agree with the read.
fn fix_up(read: &mut [u8]) {
    let Ok(mut hdr) = VirtioNetHdr::parse(read) else {
        return;
    };
    let len = read.len() - VNET_HDR_LEN;
    let udp = hdr.gso_type == VirtioNetHdr::GSO_UDP_L4;
    let packet = &mut read[VNET_HDR_LEN..];
    match packet.first().map(|b| b >> 4) {
        Some(4) if len >= 20 => {
            packet[2..4].copy_from_slice(&(len.min(65535) as u16).to_be_bytes());
            hdr.csum_start = u16::from(packet[0] & 0x0f) * 4;
        }
        Some(6) if len >= 40 => {
            packet[4..6].copy_from_slice(&((len - 40).min(65535) as u16).to_be_bytes());
            hdr.csum_start = 40;
        }
        _ => return,
    }
    hdr.csum_offset = if udp { 6 } else { 16 };
    hdr.write_to(read).expect("header fits");
}

fuzz_target!(|input: &[u8]| {
    let Some((control, read)) = input.split_first() else {
        return;
    };
    let mut owned = read.to_vec();
    if control & 1 != 0 {
        fix_up(&mut owned);
    }
    let data = owned.as_slice();
    let mut sink = Bounded(Vec::new());
    let result = split(data, &mut sink);
    let Ok(hdr) = VirtioNetHdr::parse(data) else {
        assert!(result.is_err());
        return;
    };
    let n = match result {
        Ok(n) => n,
        Err(OffloadError::SinkFull { written, .. }) => {
            assert_eq!(written, sink.0.len());
            return;
        }
        Err(_) => {
            assert!(
                sink.0.is_empty(),
                "an error other than a full sink after writing"
            );
            return;
        }
    };
    assert_eq!(n, sink.0.len());
    let packet = &data[VNET_HDR_LEN..];
    if hdr.gso_type == VirtioNetHdr::GSO_NONE {
        assert_eq!(n, 1);
        assert_eq!(sink.0[0].len(), packet.len());
        return;
    }
    // Segmented: every segment has complete checksums and the payloads add up.
    let l4 = usize::from(hdr.csum_start);
    let udp = hdr.gso_type == VirtioNetHdr::GSO_UDP_L4;
    let v6 = packet[0] >> 4 == 6;
    let mut payload = 0;
    for seg in &sink.0 {
        assert!(seg.len() <= packet.len());
        let (src, dst) = if v6 {
            (&seg[8..24], &seg[24..40])
        } else {
            (&seg[12..16], &seg[16..20])
        };
        if !v6 {
            assert_eq!(checksum(&seg[..l4], 0), 0xffff, "IPv4 header checksum");
        }
        let proto = if udp { 17 } else { 6 };
        let pseudo = pseudo_header_checksum(src, dst, proto, (seg.len() - l4) as u32);
        assert_eq!(
            checksum(&seg[l4..], u32::from(pseudo)),
            0xffff,
            "transport checksum"
        );
        let hdr_len = if udp {
            l4 + 8
        } else {
            l4 + usize::from(seg[l4 + 12] >> 4) * 4
        };
        payload += seg.len() - hdr_len;
    }
    let first = &sink.0[0];
    let hdr_len = first.len()
        - if n == 1 {
            payload
        } else {
            usize::from(hdr.gso_size)
        };
    assert_eq!(
        payload,
        packet.len() - hdr_len,
        "payload bytes lost or invented"
    );
});
