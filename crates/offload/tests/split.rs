//! `split` against segments built independently (tests/common) and checksums verified by
//! a byte-by-byte RFC 1071 reference; malformed reads must be errors, never panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use wg_offload::{
    OffloadError, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR_LEN,
    VirtioNetHdr, split,
};

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

fn with_header(hdr: VirtioNetHdr, packet: &[u8]) -> Vec<u8> {
    let mut read = hdr.to_bytes().to_vec();
    read.extend_from_slice(packet);
    read
}

/// Overwrites the virtio-net header of a read.
fn rehead(read: &mut [u8], f: impl FnOnce(&mut VirtioNetHdr)) {
    let mut hdr = VirtioNetHdr::parse(read).unwrap();
    f(&mut hdr);
    hdr.write_to(read).unwrap();
}

#[test]
fn tso_ipv4_three_segments() {
    let tcp = Tcp {
        flags: ACK | PSH | FIN | CWR,
        ..Tcp::default()
    };
    let data = payload(3000);
    let segments = split_all(&tcp.tso_read(&data, 1200)).unwrap();
    assert_eq!(segments.len(), 3);

    for (i, seg) in segments.iter().enumerate() {
        assert!(ipv4_header_ok(seg), "segment {i}: IPv4 header checksum");
        assert!(l4_checksum_ok(seg), "segment {i}: TCP checksum");
        let len = if i == 2 { 600 } else { 1200 };
        assert_eq!(seg.len(), 20 + 32 + len);
        assert_eq!(usize::from(be16(seg, 2)), seg.len(), "total length");
        assert_eq!(be16(seg, 4), 0x1234 + i as u16, "IPv4 ID");
        assert_eq!(
            be32(seg, 24),
            1_000_000 + 1200 * i as u32,
            "sequence number"
        );
        let flags = seg[33];
        assert_eq!(flags & CWR != 0, i == 0, "CWR only on the first");
        assert_eq!(
            flags & (PSH | FIN) != 0,
            i == 2,
            "PSH and FIN only on the last"
        );
        assert_eq!(flags & ACK, ACK);
        assert_eq!(&seg[52..], &data[1200 * i..1200 * i + len]);
    }
    assert_eq!(segments, tcp.expected_segments(&data, 1200));
}

#[test]
fn tso_ipv6_three_segments() {
    let tcp = Tcp {
        flags: ACK | PSH,
        ..Tcp::v6()
    };
    let data = payload(2 * 1000 + 1);
    let segments = split_all(&tcp.tso_read(&data, 1000)).unwrap();
    assert_eq!(segments.len(), 3);
    for (i, seg) in segments.iter().enumerate() {
        assert!(l4_checksum_ok(seg), "segment {i}: TCP checksum");
        assert_eq!(usize::from(be16(seg, 4)) + 40, seg.len(), "payload length");
        assert_eq!(be32(seg, 44), 1_000_000 + 1000 * i as u32);
        assert_eq!(seg[53] & PSH != 0, i == 2);
    }
    assert_eq!(segments[2].len(), 40 + 32 + 1);
    assert_eq!(segments, tcp.expected_segments(&data, 1000));
}

#[test]
fn tso_ipv4_with_options_and_ecn_bit() {
    let tcp = Tcp {
        ip_options: vec![1, 1, 1, 0],
        flags: ACK | CWR,
        ..Tcp::default()
    };
    let data = payload(2500);
    let mut read = tcp.tso_read(&data, 1000);
    rehead(&mut read, |h| h.gso_type |= VirtioNetHdr::GSO_ECN);
    let segments = split_all(&read).unwrap();
    assert_eq!(segments, tcp.expected_segments(&data, 1000));
    assert!(
        segments
            .iter()
            .all(|s| ipv4_header_ok(s) && l4_checksum_ok(s))
    );
}

#[test]
fn tso_ipv6_with_hop_by_hop_options() {
    let tcp = Tcp {
        hop_by_hop: true,
        ..Tcp::v6()
    };
    let data = payload(3000);
    let segments = split_all(&tcp.tso_read(&data, 1400)).unwrap();
    assert_eq!(segments, tcp.expected_segments(&data, 1400));
    assert!(segments.iter().all(|s| l4_checksum_ok(s)));
}

#[test]
fn tso_sequence_and_id_wrap_around() {
    let tcp = Tcp {
        seq: u32::MAX - 1000,
        ip_id: u16::MAX,
        ..Tcp::default()
    };
    let data = payload(4000);
    let segments = split_all(&tcp.tso_read(&data, 1460)).unwrap();
    assert_eq!(be16(&segments[1], 4), 0);
    assert_eq!(be32(&segments[1], 24), (u32::MAX - 1000).wrapping_add(1460));
    assert_eq!(segments, tcp.expected_segments(&data, 1460));
}

#[test]
fn tso_payload_within_one_segment_and_empty() {
    let tcp = Tcp::default();
    let one = split_all(&tcp.tso_read(&payload(100), 1460)).unwrap();
    assert_eq!(one, vec![tcp.packet(&payload(100))]);
    let empty = split_all(&tcp.tso_read(&[], 1460)).unwrap();
    assert_eq!(empty, vec![tcp.packet(&[])]);
}

#[test]
fn uso_ipv4_and_ipv6() {
    for v6 in [false, true] {
        let data = payload(3500);
        let segments = split_all(&uso_read(v6, 0xfffe, &data, 1200)).unwrap();
        assert_eq!(segments.len(), 3);
        for seg in &segments {
            assert!(ipv4_header_ok(seg) && l4_checksum_ok(seg));
            let l3 = l3_len(seg);
            assert_eq!(usize::from(be16(seg, l3 + 4)), seg.len() - l3, "UDP length");
        }
        assert_eq!(segments, expected_udp_segments(v6, 0xfffe, &data, 1200));
    }
}

#[test]
fn uso_computed_zero_checksum_is_sent_as_ffff() {
    // Find a payload whose UDP checksum comes out as 0 and check it is sent as 0xffff.
    let mut found = false;
    for x in 0..=u16::MAX {
        let data = x.to_be_bytes();
        let mut p = udp_packet(false, 1, &data);
        p[26..28].copy_from_slice(&[0, 0]);
        if ref_sum(&[&pseudo_header(&p, 17, 10), &p[20..]]) != 0xffff {
            continue;
        }
        let segments = split_all(&uso_read(false, 1, &data, 100)).unwrap();
        assert_eq!(be16(&segments[0], 26), 0xffff);
        assert!(l4_checksum_ok(&segments[0]));
        found = true;
        break;
    }
    assert!(found, "no payload with a zero UDP checksum");
}

#[test]
fn gso_none_passes_through() {
    let packet = Tcp::default().packet(&payload(50));
    for flags in [0, VIRTIO_NET_HDR_F_DATA_VALID] {
        let hdr = VirtioNetHdr {
            flags,
            ..VirtioNetHdr::default()
        };
        assert_eq!(
            split_all(&with_header(hdr, &packet)).unwrap(),
            vec![packet.clone()]
        );
    }
}

#[test]
fn gso_none_completes_partial_checksum() {
    for tcp in [Tcp::default(), Tcp::v6()] {
        let full = tcp.packet(&payload(333));
        // What the kernel hands over: the pseudo-header sum in the checksum field.
        let mut partial = full.clone();
        let l3 = tcp.ip_header_len();
        let sum = ref_sum(&[&pseudo_header(&full, 6, full.len() - l3)]);
        partial[l3 + 16..l3 + 18].copy_from_slice(&sum.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: l3 as u16,
            csum_offset: 16,
            ..VirtioNetHdr::default()
        };
        let out = split_all(&with_header(hdr, &partial)).unwrap();
        assert_eq!(out, vec![full]);
        assert!(l4_checksum_ok(&out[0]));
    }
    // UDP too.
    let full = udp_packet(true, 0, &payload(99));
    let mut partial = full.clone();
    let sum = ref_sum(&[&pseudo_header(&full, 17, full.len() - 40)]);
    partial[46..48].copy_from_slice(&sum.to_be_bytes());
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 40,
        csum_offset: 6,
        ..VirtioNetHdr::default()
    };
    assert_eq!(split_all(&with_header(hdr, &partial)).unwrap(), vec![full]);
}

#[test]
fn malformed_reads_are_errors() {
    let tcp = Tcp::default();
    let good = tcp.tso_read(&payload(3000), 1000);
    assert!(split_all(&good).is_ok());

    // Truncated anywhere: header, IP header, TCP header, and mid-payload (length mismatch).
    for cut in [0, 5, 9, 10, 11, 25, 35, 50, 61, 100, good.len() - 1] {
        assert!(split_all(&good[..cut]).is_err(), "cut at {cut} accepted");
    }
    /// A name, how to spoil the good read, and which error it must give.
    type Case = (
        &'static str,
        Box<dyn Fn(&mut Vec<u8>)>,
        fn(&OffloadError) -> bool,
    );
    let cases: Vec<Case> = vec![
        (
            "gso_size 0",
            Box::new(|r| rehead(r, |h| h.gso_size = 0)),
            |e| *e == OffloadError::ZeroGsoSize,
        ),
        (
            "csum_start past the packet",
            Box::new(|r| rehead(r, |h| h.csum_start = 9000)),
            |e| matches!(e, OffloadError::BadCsumStart { .. }),
        ),
        (
            "csum_start inside the IP header",
            Box::new(|r| rehead(r, |h| h.csum_start = 12)),
            |e| matches!(e, OffloadError::BadCsumStart { .. }),
        ),
        (
            "csum_offset not TCP's",
            Box::new(|r| rehead(r, |h| h.csum_offset = 6)),
            |e| matches!(e, OffloadError::BadCsumOffset { .. }),
        ),
        (
            "UFO",
            Box::new(|r| rehead(r, |h| h.gso_type = VirtioNetHdr::GSO_UDP)),
            |e| *e == OffloadError::UnsupportedGsoType(3),
        ),
        (
            "unknown type",
            Box::new(|r| rehead(r, |h| h.gso_type = 2)),
            |e| *e == OffloadError::UnsupportedGsoType(2),
        ),
        (
            "ECN bit on UDP",
            Box::new(|r| rehead(r, |h| h.gso_type = 0x85)),
            |e| *e == OffloadError::UnsupportedGsoType(0x85),
        ),
        (
            "TCPv6 type on IPv4",
            Box::new(|r| rehead(r, |h| h.gso_type = VirtioNetHdr::GSO_TCPV6)),
            |e| matches!(e, OffloadError::IpVersionMismatch { version: 4, .. }),
        ),
        ("IP version 5", Box::new(|r| r[VNET_HDR_LEN] = 0x55), |e| {
            matches!(e, OffloadError::IpVersionMismatch { version: 5, .. })
        }),
        ("IHL below 5", Box::new(|r| r[VNET_HDR_LEN] = 0x44), |e| {
            matches!(e, OffloadError::Malformed(_))
        }),
        (
            "total length too long",
            Box::new(|r| r[VNET_HDR_LEN + 3] ^= 1),
            |e| matches!(e, OffloadError::LengthMismatch { .. }),
        ),
        (
            "total length too short",
            Box::new(|r| {
                let len = (r.len() - VNET_HDR_LEN - 1) as u16;
                r[VNET_HDR_LEN + 2..VNET_HDR_LEN + 4].copy_from_slice(&len.to_be_bytes());
            }),
            |e| matches!(e, OffloadError::LengthMismatch { .. }),
        ),
        ("fragment", Box::new(|r| r[VNET_HDR_LEN + 6] |= 0x20), |e| {
            matches!(e, OffloadError::Malformed(_))
        }),
        (
            "UDP protocol in TSO",
            Box::new(|r| r[VNET_HDR_LEN + 9] = 17),
            |e| matches!(e, OffloadError::Malformed(_)),
        ),
        (
            "TCP data offset 4",
            Box::new(|r| r[VNET_HDR_LEN + 32] = 0x40),
            |e| matches!(e, OffloadError::Malformed(_)),
        ),
        (
            "TCP data offset past the packet",
            Box::new(|r| {
                // A 20-byte IP + 60-byte TCP header claimed on a 60-byte packet.
                r.truncate(VNET_HDR_LEN + 60);
                r[VNET_HDR_LEN + 2..VNET_HDR_LEN + 4].copy_from_slice(&60u16.to_be_bytes());
                r[VNET_HDR_LEN + 32] = 0xf0;
            }),
            |e| matches!(e, OffloadError::Truncated { .. }),
        ),
    ];
    for (name, mutate, expected) in cases {
        let mut read = good.clone();
        mutate(&mut read);
        let mut sink = BoundedSink::new(usize::MAX);
        let err = split(&read, &mut sink).expect_err(name);
        assert!(expected(&err), "{name}: unexpected {err:?}");
        assert!(
            sink.segments.is_empty(),
            "{name}: wrote into the sink before failing"
        );
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn ipv6_routing_header_and_mismatched_payload_length_are_errors() {
    let tcp = Tcp::v6();
    let mut read = tcp.tso_read(&payload(3000), 1000);
    read[VNET_HDR_LEN + 5] ^= 1;
    assert!(matches!(
        split_all(&read),
        Err(OffloadError::LengthMismatch { .. })
    ));

    let mut read = Tcp {
        hop_by_hop: true,
        ..Tcp::v6()
    }
    .tso_read(&payload(3000), 1000);
    read[VNET_HDR_LEN + 6] = 43; // the extension header now claims to be a routing header
    assert!(matches!(split_all(&read), Err(OffloadError::Malformed(_))));
}

#[test]
fn gso_none_checksum_field_outside_packet_is_error() {
    let packet = Tcp::default().packet(&payload(10));
    assert_eq!(packet.len(), 62);
    // The field must fit entirely: bytes 60..62 is the last place it can be.
    for (start, offset, ok) in [
        (20, 16, true),
        (60, 0, true),
        (20, 40, true),
        (61, 0, false),
        (20, 41, false),
        (62, 0, false),
        (u16::MAX, u16::MAX, false),
    ] {
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: start,
            csum_offset: offset,
            ..VirtioNetHdr::default()
        };
        let result = split_all(&with_header(hdr, &packet));
        assert_eq!(
            result.is_ok(),
            ok,
            "csum_start {start} csum_offset {offset}"
        );
    }
    assert!(
        split_all(&VirtioNetHdr::default().to_bytes()).is_err(),
        "empty packet"
    );
}

#[test]
fn sink_too_small_reports_what_it_wrote() {
    let read = Tcp::default().tso_read(&payload(5000), 1000);
    let mut sink = BoundedSink::new(3);
    let err = split(&read, &mut sink).unwrap_err();
    assert_eq!(
        err,
        OffloadError::SinkFull {
            written: 3,
            segments: 5
        }
    );
    assert_eq!(sink.segments.len(), 3);

    let mut exact = BoundedSink::new(5);
    assert_eq!(split(&read, &mut exact).unwrap(), 5);
}

#[test]
fn sink_with_wrong_slot_size_is_error() {
    struct Liar(Vec<u8>);
    impl wg_offload::SegmentSink for Liar {
        fn next_segment(&mut self, len: usize) -> Option<&mut [u8]> {
            self.0 = vec![0; len + 1];
            Some(&mut self.0)
        }
    }
    let read = Tcp::default().tso_read(&payload(500), 1000);
    assert!(matches!(
        split(&read, &mut Liar(Vec::new())),
        Err(OffloadError::SinkSlotSize { .. })
    ));
}

#[test]
fn vec_sink_collects_segments() {
    let read = Tcp::default().tso_read(&payload(2000), 1000);
    let mut sink: Vec<Vec<u8>> = Vec::new();
    assert_eq!(split(&read, &mut sink).unwrap(), 2);
    assert_eq!(sink, Tcp::default().expected_segments(&payload(2000), 1000));
}
