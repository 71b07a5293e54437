//! `Gro` against the merge rules stated in its documentation, with merged writes checked
//! field by field by the reference and then segmented again by `split` (round trip).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;
use wg_offload::{
    Gro, GroStats, MAX_GRO_WRITE_LEN, VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR_LEN, VirtioNetHdr,
};

fn payload(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// `n` full segments of `size` bytes (the last `last` bytes long) of one flow.
fn segments(tcp: &Tcp, size: usize, n: usize, last: usize) -> Vec<Vec<u8>> {
    let data = payload(size * (n - 1) + last, tcp.sport as u8);
    tcp.expected_segments(&data, size)
}

fn zero_header_write(packet: &[u8]) -> Vec<u8> {
    let mut w = vec![0; VNET_HDR_LEN];
    w.extend_from_slice(packet);
    w
}

/// Checks a merged write against the segments it was made of, by the rules alone.
fn check_merged(write: &[u8], segs: &[Vec<u8>]) {
    let hdr = VirtioNetHdr::parse(write).unwrap();
    let p = &write[VNET_HDR_LEN..];
    let first = &segs[0];
    let v6 = first[0] >> 4 == 6;
    let l3 = l3_len(first);
    let hlen = l3 + usize::from(first[l3 + 12] >> 4) * 4;
    let payload: Vec<u8> = segs.iter().flat_map(|s| s[hlen..].to_vec()).collect();

    assert_eq!(
        hdr,
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: if v6 {
                VirtioNetHdr::GSO_TCPV6
            } else {
                VirtioNetHdr::GSO_TCPV4
            },
            hdr_len: hlen as u16,
            gso_size: (first.len() - hlen) as u16,
            csum_start: l3 as u16,
            csum_offset: 16,
        }
    );
    assert_eq!(p.len(), hlen + payload.len());
    assert_eq!(&p[hlen..], &payload[..], "payloads concatenated in order");
    if v6 {
        assert_eq!(usize::from(be16(p, 4)), p.len() - 40, "IPv6 payload length");
        assert_eq!(&p[..4], &first[..4]);
        assert_eq!(&p[6..40], &first[6..40]);
    } else {
        assert_eq!(usize::from(be16(p, 2)), p.len(), "IPv4 total length");
        assert!(p.len() <= 65535);
        assert!(ipv4_header_ok(p), "IPv4 header checksum");
        assert_eq!(&p[..2], &first[..2]);
        assert_eq!(&p[4..10], &first[4..10], "first ID, flags, TTL, protocol");
        assert_eq!(&p[12..20], &first[12..20]);
    }
    // TCP header: the first segment's, PSH if the last one had it, checksum partial.
    let last_psh = segs.last().unwrap()[l3 + 13] & PSH;
    assert_eq!(&p[l3..l3 + 13], &first[l3..l3 + 13]);
    assert_eq!(p[l3 + 13], first[l3 + 13] | last_psh);
    assert_eq!(&p[l3 + 14..l3 + 16], &first[l3 + 14..l3 + 16]);
    assert_eq!(&p[l3 + 18..hlen], &first[l3 + 18..hlen]);
    let partial = ref_sum(&[&pseudo_header(p, 6, p.len() - l3)]);
    assert_eq!(
        be16(p, l3 + 16),
        partial,
        "folded, uncomplemented pseudo-header sum"
    );

    // Completing it as the kernel would gives a valid TCP checksum.
    let mut done = p.to_vec();
    let c = !ref_sum(&[&done[l3..]]);
    done[l3 + 16..l3 + 18].copy_from_slice(&c.to_be_bytes());
    assert!(l4_checksum_ok(&done));
}

/// Splitting every write again gives back exactly `inputs` (single flow, so in order).
fn assert_round_trip(inputs: &[Vec<u8>], writes: &[Vec<u8>]) {
    let again: Vec<Vec<u8>> = writes.iter().flat_map(|w| split_all(w).unwrap()).collect();
    assert_eq!(again, inputs);
}

#[test]
fn consecutive_segments_merge_ipv4_and_ipv6() {
    for tcp in [Tcp::default(), Tcp::v6()] {
        let segs = segments(&tcp, 1000, 3, 1000);
        let writes = gro_writes(&segs);
        assert_eq!(writes.len(), 1);
        check_merged(&writes[0], &segs);
        assert_round_trip(&segs, &writes);
    }
}

#[test]
fn short_last_segment_and_psh_close_the_write() {
    let tcp = Tcp {
        flags: ACK | PSH,
        ..Tcp::default()
    };
    let segs = segments(&tcp, 1200, 4, 300);
    assert_eq!(segs[3][33], ACK | PSH);
    assert_eq!(segs[2][33], ACK);
    let next = Tcp {
        seq: be32(&segs[3], 24) + 300,
        ip_id: 0x1238,
        ..Tcp::default()
    };
    let mut all = segs.clone();
    all.push(next.packet(&payload(1200, 1)));
    let writes = gro_writes(&all);
    assert_eq!(writes.len(), 2);
    check_merged(&writes[0], &segs);
    assert_eq!(writes[1], zero_header_write(&all[4]));
    assert_round_trip(&all, &writes);
}

#[test]
fn short_segment_followed_by_a_full_one() {
    let tcp = Tcp::default();
    let a = tcp.packet(&payload(1000, 0));
    let b = Tcp {
        seq: tcp.seq + 1000,
        ip_id: tcp.ip_id + 1,
        ..tcp.clone()
    }
    .packet(&payload(400, 0));
    let c = Tcp {
        seq: tcp.seq + 1400,
        ip_id: tcp.ip_id + 2,
        ..tcp.clone()
    }
    .packet(&payload(1000, 0));
    let d = Tcp {
        seq: tcp.seq + 2400,
        ip_id: tcp.ip_id + 3,
        ..tcp.clone()
    }
    .packet(&payload(1000, 0));
    let inputs = vec![a, b, c, d];
    let writes = gro_writes(&inputs);
    assert_eq!(writes.len(), 2, "[a b] closed by the short b, then [c d]");
    check_merged(&writes[0], &inputs[..2]);
    check_merged(&writes[1], &inputs[2..]);
    assert_round_trip(&inputs, &writes);

    // A longer segment after a shorter first one cannot join it.
    let longer = Tcp {
        seq: tcp.seq + 1400,
        ip_id: tcp.ip_id + 2,
        ..tcp
    }
    .packet(&payload(1000, 0));
    let short_first = vec![inputs[1].clone(), longer];
    assert_eq!(gro_writes(&short_first).len(), 2);
}

#[test]
fn psh_in_the_middle_ends_the_write() {
    let tcp = Tcp::default();
    let mut segs = segments(&tcp, 800, 3, 800);
    // Segment 1 gets PSH (rebuilt so its checksum stays right).
    segs[1] = Tcp {
        seq: tcp.seq + 800,
        ip_id: tcp.ip_id + 1,
        flags: ACK | PSH,
        ..tcp.clone()
    }
    .packet(&segs[1][52..]);
    let writes = gro_writes(&segs);
    assert_eq!(writes.len(), 2);
    check_merged(&writes[0], &segs[..2]);
    assert_eq!(writes[1], zero_header_write(&segs[2]));
    assert_round_trip(&segs, &writes);
}

#[test]
fn interleaved_flows_merge_separately_in_open_order() {
    let a = Tcp {
        sport: 1111,
        ..Tcp::default()
    };
    let b = Tcp {
        sport: 2222,
        seq: 5,
        ..Tcp::default()
    };
    let c = Tcp {
        sport: 1111,
        ..Tcp::v6()
    };
    let (sa, sb, sc) = (
        segments(&a, 500, 3, 500),
        segments(&b, 700, 3, 100),
        segments(&c, 600, 2, 600),
    );
    let mut mixed = Vec::new();
    for i in 0..3 {
        mixed.push(sa[i].clone());
        mixed.push(sb[i].clone());
        if let Some(s) = sc.get(i) {
            mixed.push(s.clone());
        }
    }
    let writes = gro_writes(&mixed);
    assert_eq!(writes.len(), 3);
    check_merged(&writes[0], &sa);
    check_merged(&writes[1], &sb);
    check_merged(&writes[2], &sc);
    assert_eq!(split_all(&writes[0]).unwrap(), sa);
    assert_eq!(split_all(&writes[1]).unwrap(), sb);
    assert_eq!(split_all(&writes[2]).unwrap(), sc);
}

#[test]
fn out_of_order_segments_are_written_unchanged_in_arrival_order() {
    let segs = segments(&Tcp::default(), 1000, 4, 1000);
    let inputs = vec![
        segs[0].clone(),
        segs[2].clone(),
        segs[1].clone(),
        segs[3].clone(),
    ];
    let writes = gro_writes(&inputs);
    // 0 opens; 2 does not follow it (opens its own); 1 may not join 0 past 2 (order);
    // 3 follows 2 but 2's newest item is 1's, which 3 does not follow.
    assert_eq!(writes.len(), 4);
    for (w, p) in writes.iter().zip(&inputs) {
        assert_eq!(*w, zero_header_write(p));
    }
    // A retransmission (same seq again) does not merge either.
    let writes = gro_writes(&[segs[0].clone(), segs[0].clone()]);
    assert_eq!(writes.len(), 2);
}

/// Two segments of one flow where the second differs by `change`: never merged.
fn assert_not_merged(name: &str, change: impl Fn(&mut Tcp)) {
    let first = Tcp::default();
    let mut second = Tcp {
        seq: first.seq + 1000,
        ip_id: first.ip_id + 1,
        ..first.clone()
    };
    change(&mut second);
    let inputs = vec![
        first.packet(&payload(1000, 0)),
        second.packet(&payload(1000, 0)),
    ];
    let writes = gro_writes(&inputs);
    assert_eq!(writes.len(), 2, "{name}: merged");
    assert_eq!(writes[0], zero_header_write(&inputs[0]), "{name}");
    assert_eq!(writes[1], zero_header_write(&inputs[1]), "{name}");
}

#[test]
fn differing_fields_are_not_merged() {
    assert_not_merged("timestamp option", |t| t.options[11] = 9);
    assert_not_merged("option length", |t| t.options = vec![1, 1, 1, 1]);
    assert_not_merged("ack number", |t| t.ack += 1);
    assert_not_merged("window", |t| t.window += 1);
    assert_not_merged("IPv4 ID +2", |t| t.ip_id += 1);
    assert_not_merged("IPv4 ID equal", |t| t.ip_id -= 1);
    assert_not_merged("TTL", |t| t.ttl -= 1);
    assert_not_merged("TOS", |t| t.tos = 4);
    assert_not_merged("DF", |t| t.frag = 0);
    assert_not_merged("SYN", |t| t.flags = SYN | ACK);
    assert_not_merged("FIN", |t| t.flags = FIN | ACK);
    assert_not_merged("RST", |t| t.flags = RST | ACK);
    assert_not_merged("URG", |t| {
        t.flags = URG | ACK;
        t.urgent = 5;
    });
    assert_not_merged("ECE", |t| t.flags = ECE | ACK);
    assert_not_merged("CWR", |t| t.flags = CWR | ACK);
    assert_not_merged("no ACK", |t| t.flags = 0);
    assert_not_merged("other destination port", |t| t.dport += 1);
    assert_not_merged("other destination", |t| t.dst[3] = 9);
    assert_not_merged("sequence gap", |t| t.seq += 1);
}

#[test]
fn ipv6_differing_fields_are_not_merged() {
    for (name, change) in [
        (
            "flow label",
            Box::new(|t: &mut Tcp| t.flow_label += 1) as Box<dyn Fn(&mut Tcp)>,
        ),
        ("traffic class", Box::new(|t: &mut Tcp| t.tos = 1)),
        ("hop limit", Box::new(|t: &mut Tcp| t.ttl = 1)),
        ("source", Box::new(|t: &mut Tcp| t.src[15] = 7)),
    ] {
        let first = Tcp::v6();
        let mut second = Tcp {
            seq: first.seq + 1000,
            ..first.clone()
        };
        change(&mut second);
        let inputs = vec![
            first.packet(&payload(1000, 0)),
            second.packet(&payload(1000, 0)),
        ];
        assert_eq!(gro_writes(&inputs).len(), 2, "{name}");
    }
    // Extension headers: never merged, but still written unchanged.
    let hbh = Tcp {
        hop_by_hop: true,
        ..Tcp::v6()
    };
    let segs = segments(&hbh, 1000, 3, 1000);
    let writes = gro_writes(&segs);
    assert_eq!(writes.len(), 3);
    assert_round_trip(&segs, &writes);
}

#[test]
fn ipv4_options_and_fragments_are_not_merged() {
    let with_options = Tcp {
        ip_options: vec![1, 1, 1, 0],
        ..Tcp::default()
    };
    let segs = segments(&with_options, 1000, 3, 1000);
    assert_eq!(gro_writes(&segs).len(), 3);

    let fragments = Tcp {
        frag: 0x2000,
        ..Tcp::default()
    }; // MF set, offset 0
    let segs = segments(&fragments, 1000, 3, 1000);
    let writes = gro_writes(&segs);
    assert_eq!(writes.len(), 3);
    assert_round_trip(&segs, &writes);
}

#[test]
fn a_non_mergeable_packet_of_the_flow_keeps_later_segments_behind_it() {
    let tcp = Tcp::default();
    let segs = segments(&tcp, 1000, 3, 1000);
    // segs[1] carries an IPv4 option: same flow, not mergeable. segs[2] must not jump
    // ahead of it into the write of segs[0].
    let odd = Tcp {
        seq: tcp.seq + 1000,
        ip_id: tcp.ip_id + 1,
        ip_options: vec![1, 1, 1, 0],
        ..tcp
    }
    .packet(&segs[1][52..]);
    let inputs = vec![segs[0].clone(), odd, segs[2].clone()];
    let writes = gro_writes(&inputs);
    assert_eq!(writes.len(), 3);
    for (w, p) in writes.iter().zip(&inputs) {
        assert_eq!(*w, zero_header_write(p));
    }
}

#[test]
fn bad_checksums_are_not_merged() {
    let segs = segments(&Tcp::default(), 1000, 3, 1000);
    // A corrupted payload byte in the second segment: written unchanged for the kernel
    // to drop; the third then starts a write of its own.
    let mut bad = segs.clone();
    bad[1][100] ^= 0x40;
    let writes = gro_writes(&bad);
    assert_eq!(writes.len(), 3);
    assert_eq!(writes[1], zero_header_write(&bad[1]));

    // A corrupted first segment: nothing merges into it; the next two merge.
    let mut bad = segs.clone();
    bad[0][60] ^= 1;
    let writes = gro_writes(&bad);
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[0], zero_header_write(&bad[0]));
    check_merged(&writes[1], &segs[1..]);

    // A bad IPv4 header checksum.
    let mut bad = segs.clone();
    bad[1][10] ^= 1;
    assert_eq!(gro_writes(&bad).len(), 3);

    // Any other checksum value is wrong.
    let mut bad = segs;
    bad[1][36..38].copy_from_slice(&[0xff, 0xff]);
    assert_eq!(gro_writes(&bad).len(), 3);
}

#[test]
fn ffff_for_a_zero_tcp_checksum_is_valid_but_not_merged() {
    // Find a second segment whose TCP checksum comes out as 0, then send the equivalent
    // 0xffff (as Linux does after completing a checksum): it verifies, but splitting the
    // merged write would produce 0, so merging would change the packet.
    let tcp = Tcp::default();
    let first = tcp.packet(&[1, 2, 3, 4]);
    let next = Tcp {
        seq: tcp.seq + 4,
        ip_id: tcp.ip_id + 1,
        ..tcp
    };
    let second = (0..=u16::MAX)
        .map(|x| next.packet(&[x as u8, (x >> 8) as u8, 0, 0]))
        .find(|p| be16(p, 36) == 0)
        .expect("a payload with a zero checksum");
    let mut alternative = second.clone();
    alternative[36..38].copy_from_slice(&[0xff, 0xff]);
    assert!(
        l4_checksum_ok(&alternative),
        "0xffff is an equivalent checksum"
    );

    assert_eq!(
        gro_writes(&[first.clone(), second.clone()]).len(),
        1,
        "the 0 form merges"
    );
    let writes = gro_writes(&[first, alternative.clone()]);
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[1], zero_header_write(&alternative));
}

#[test]
fn ip_length_field_must_match_the_packet() {
    // Trailing bytes beyond the IP length that the TCP checksum nevertheless covers: the
    // checksum verifies over the bytes, but the kernel would trim them, so no merge.
    for tcp in [Tcp::default(), Tcp::v6()] {
        let first = tcp.packet(&payload(1000, 0));
        let mut second = Tcp {
            seq: tcp.seq + 1000,
            ip_id: tcp.ip_id + 1,
            ..tcp.clone()
        }
        .packet(&payload(1000, 0));
        let at = if tcp.v6 { 4 } else { 2 };
        let claimed = be16(&second, at) - 2;
        second[at..at + 2].copy_from_slice(&claimed.to_be_bytes());
        if !tcp.v6 {
            second[10..12].copy_from_slice(&[0, 0]);
            let c = !ref_sum(&[&second[..20]]);
            second[10..12].copy_from_slice(&c.to_be_bytes());
        }
        assert_eq!(gro_writes(&[first, second]).len(), 2, "v6: {}", tcp.v6);
    }
}

#[test]
fn nothing_joins_a_packet_with_psh() {
    let tcp = Tcp {
        flags: ACK | PSH,
        ..Tcp::default()
    };
    let first = tcp.packet(&payload(1000, 0));
    let second = Tcp {
        seq: tcp.seq + 1000,
        ip_id: tcp.ip_id + 1,
        flags: ACK,
        ..tcp
    }
    .packet(&payload(1000, 0));
    let writes = gro_writes(&[first.clone(), second.clone()]);
    assert_eq!(
        writes,
        vec![zero_header_write(&first), zero_header_write(&second)]
    );
}

#[test]
fn pure_acks_and_non_tcp_are_written_unchanged() {
    let ack = Tcp::default().packet(&[]);
    let udp = udp_packet(false, 1, &[1, 2, 3]);
    let inputs = vec![ack.clone(), ack, udp, vec![], vec![0x45], vec![0xff; 70]];
    let writes = gro_writes(&inputs);
    assert_eq!(writes.len(), inputs.len());
    for (w, p) in writes.iter().zip(&inputs) {
        assert_eq!(*w, zero_header_write(p));
    }
}

#[test]
fn merged_writes_stay_within_ip_length_limits() {
    for tcp in [Tcp::default(), Tcp::v6()] {
        let segs = segments(&tcp, 1400, 100, 1400);
        let writes = gro_writes(&segs);
        assert!(writes.len() >= 3);
        for w in &writes {
            let p = &w[VNET_HDR_LEN..];
            assert!(w.len() <= MAX_GRO_WRITE_LEN);
            if tcp.v6 {
                assert!(p.len() - 40 <= 65535);
            } else {
                assert!(p.len() <= 65535);
            }
        }
        // Each write is as full as the limit allows: one more segment would not fit.
        let first = &writes[0][VNET_HDR_LEN..];
        let limit = if tcp.v6 { 65535 + 40 } else { 65535 };
        assert!(first.len() + 1400 > limit);
        assert_round_trip(&segs, &writes);
    }
}

#[test]
fn full_gro_drops_only_what_needs_a_new_write() {
    let mut gro = Gro::new();
    assert!(gro.is_empty() && !gro.is_full());
    let tcp = Tcp::default();
    let segs = segments(&tcp, 1000, 3, 1000);
    gro.push(&segs[0]);
    for i in 1..Gro::MAX_PENDING {
        gro.push(&udp_packet(false, i as u16, &[i as u8]));
    }
    assert!(gro.is_full());
    gro.push(&segs[1]); // merges into the first write: accepted
    gro.push(&udp_packet(false, 0, &[0])); // needs a write of its own: dropped
    assert_eq!(
        gro.stats(),
        GroStats {
            packets: 66,
            coalesced: 1,
            writes: 0,
            dropped_full: 1
        }
    );
    let mut writes = Vec::new();
    gro.flush(|w| writes.push(w.to_vec()));
    assert_eq!(writes.len(), Gro::MAX_PENDING);
    check_merged(&writes[0], &segs[..2]);
    assert!(gro.is_empty());
    assert_eq!(gro.stats().writes, 64);

    // Buffers are reused: the same Gro works the same way after a flush.
    for s in &segs {
        gro.push(s);
    }
    let mut again = Vec::new();
    gro.flush(|w| again.push(w.to_vec()));
    assert_eq!(again.len(), 1);
    check_merged(&again[0], &segs);
}

#[test]
fn oversized_garbage_is_written_unchanged_and_memory_shrinks_back() {
    let mut gro = Gro::default();
    let big = vec![0x45; 200_000];
    gro.push(&big);
    let mut lens = Vec::new();
    gro.flush(|w| lens.push(w.len()));
    assert_eq!(lens, vec![VNET_HDR_LEN + big.len()]);
    assert!(format!("{gro:?}").contains("pending: 0"));
}
