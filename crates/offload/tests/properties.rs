//! Properties: TSO/USO splitting matches segments built independently and every checksum
//! verifies by the reference; GRO of those segments gives one write that splits back into
//! them byte for byte; and `Gro` on any bytes never panics, stays bounded, loses nothing
//! and keeps each flow's order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::HashMap;

use common::*;
use proptest::prelude::*;
use wg_offload::{Gro, MAX_GRO_WRITE_LEN, VNET_HDR_LEN, VirtioNetHdr};

/// A flow description: version, addresses, start seq and ID, options, PSH on the last.
fn flow() -> impl Strategy<Value = Tcp> {
    (
        any::<bool>(),
        any::<u32>(),
        any::<u16>(),
        any::<bool>(),
        any::<bool>(),
        any::<[u8; 4]>(),
    )
        .prop_map(|(v6, seq, ip_id, timestamps, psh, addr)| {
            let mut tcp = if v6 { Tcp::v6() } else { Tcp::default() };
            tcp.seq = seq;
            tcp.ip_id = ip_id;
            tcp.src[..4].copy_from_slice(&addr);
            if !timestamps {
                tcp.options.clear();
            }
            if psh {
                tcp.flags |= PSH;
            }
            tcp
        })
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(97).wrapping_add(seed))
        .collect()
}

/// Split, check against the independent segments, GRO, split again.
fn tso_round_trip(tcp: &Tcp, payload: &[u8], gso: u16) -> Result<(), TestCaseError> {
    let read = tcp.tso_read(payload, gso);
    let segs = split_all(&read).unwrap();
    prop_assert_eq!(&segs, &tcp.expected_segments(payload, usize::from(gso)));
    for s in &segs {
        prop_assert!(ipv4_header_ok(s) && l4_checksum_ok(s));
    }

    let writes = gro_writes(&segs);
    prop_assert_eq!(
        writes.len(),
        1,
        "one flow in order must merge into one write"
    );
    let hdr = VirtioNetHdr::parse(&writes[0]).unwrap();
    let merged = &writes[0][VNET_HDR_LEN..];
    if segs.len() == 1 {
        prop_assert_eq!(hdr, VirtioNetHdr::default());
        prop_assert_eq!(merged, &segs[0][..]);
    } else {
        prop_assert_eq!(usize::from(hdr.gso_size), usize::from(gso));
        // Completing the partial checksum gives back the super-packet, fully checksummed.
        let mut done = merged.to_vec();
        let l3 = tcp.ip_header_len();
        let c = !ref_sum(&[&done[l3..]]);
        done[l3 + 16..l3 + 18].copy_from_slice(&c.to_be_bytes());
        prop_assert_eq!(done, tcp.packet(payload));
    }
    prop_assert_eq!(split_all(&writes[0]).unwrap(), segs);
    Ok(())
}

proptest! {
    #[test]
    fn tso_split_and_gro_round_trip(
        tcp in flow(),
        len in 0usize..6000,
        gso in 1u16..=1460,
        seed in any::<u8>(),
    ) {
        tso_round_trip(&tcp, &bytes(len, seed), gso)?;
    }

    #[test]
    fn tso_near_64k_round_trip(
        tcp in flow(),
        short in 0usize..3000,
        gso in 536u16..=1460,
    ) {
        let max = if tcp.v6 { 65535 } else { 65535 - tcp.ip_header_len() } - tcp.tcp_header_len();
        tso_round_trip(&tcp, &bytes(max - short, 1), gso)?;
    }

    #[test]
    fn uso_split_matches_independent_datagrams(
        v6 in any::<bool>(),
        id in any::<u16>(),
        len in 0usize..5000,
        gso in 1u16..=1460,
    ) {
        let payload = bytes(len, 3);
        let segs = split_all(&uso_read(v6, id, &payload, gso)).unwrap();
        prop_assert_eq!(&segs, &expected_udp_segments(v6, id, &payload, usize::from(gso)));
        for s in &segs {
            prop_assert!(ipv4_header_ok(s) && l4_checksum_ok(s));
        }
    }

    #[test]
    fn split_never_panics(read in proptest::collection::vec(any::<u8>(), 0..300), limit in 0usize..8) {
        let mut sink = BoundedSink::new(limit);
        if let Ok(n) = wg_offload::split(&read, &mut sink) {
            prop_assert_eq!(n, sink.segments.len());
        }
    }

    #[test]
    fn gro_on_arbitrary_bytes_is_bounded(
        packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..150),
    ) {
        let mut gro = Gro::new();
        let mut writes = Vec::new();
        for p in &packets {
            gro.push(p);
            if gro.is_full() {
                gro.flush(|w| writes.push(w.to_vec()));
            }
        }
        gro.flush(|w| writes.push(w.to_vec()));
        prop_assert!(writes.len() <= packets.len());
        for w in &writes {
            prop_assert!(w.len() <= VNET_HDR_LEN + 120);
        }
        let stats = gro.stats();
        prop_assert_eq!(stats.dropped_full, 0);
        prop_assert_eq!(stats.writes + stats.coalesced, packets.len() as u64);
    }

    /// Several flows, segmented, interleaved in any order, some bytes flipped, plus junk:
    /// whatever is merged splits back into exactly the pushed packets, nothing is lost, and
    /// each flow's packets come out in the order they were pushed.
    #[test]
    fn gro_loses_nothing_and_keeps_flow_order(
        flows in proptest::collection::vec((flow(), 0usize..4000, 100usize..=1460), 1..4),
        order in proptest::collection::vec(any::<u8>(), 0..200),
        flips in proptest::collection::vec((any::<u16>(), any::<u16>(), any::<u8>()), 0..4),
        junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..4),
    ) {
        // Segments per flow (distinct source ports keep flows apart).
        let mut queues: Vec<Vec<Vec<u8>>> = flows
            .iter()
            .enumerate()
            .map(|(k, (tcp, len, gso))| {
                let tcp = Tcp { sport: 1000 + k as u16, ..tcp.clone() };
                tcp.expected_segments(&bytes(*len, k as u8), *gso)
            })
            .collect();
        // Interleave: `order` picks which flow goes next; the rest follow in turn.
        let mut pushed: Vec<(Option<usize>, Vec<u8>)> = Vec::new();
        for pick in order.iter().map(|b| usize::from(*b)) {
            let k = pick % queues.len();
            if !queues[k].is_empty() {
                pushed.push((Some(k), queues[k].remove(0)));
            }
        }
        for (k, q) in queues.iter_mut().enumerate() {
            pushed.extend(q.drain(..).map(|p| (Some(k), p)));
        }
        for (i, j) in junk.into_iter().enumerate() {
            let at = (i * 7) % (pushed.len() + 1);
            pushed.insert(at, (None, j));
        }
        for (which, at, xor) in flips {
            let n = pushed.len();
            let (flow, p) = &mut pushed[usize::from(which) % n];
            if !p.is_empty() && xor != 0 {
                let len = p.len();
                p[usize::from(at) % len] ^= xor;
                *flow = None; // may now belong to no flow, or another one
            }
        }

        let mut gro = Gro::new();
        let mut writes = Vec::new();
        for (_, p) in &pushed {
            gro.push(p);
            if gro.is_full() {
                gro.flush(|w| writes.push(w.to_vec()));
            }
        }
        gro.flush(|w| writes.push(w.to_vec()));

        let mut out = Vec::new();
        for w in &writes {
            prop_assert!(w.len() <= MAX_GRO_WRITE_LEN.max(VNET_HDR_LEN + 4000 + 120));
            let hdr = VirtioNetHdr::parse(w).unwrap();
            if hdr == VirtioNetHdr::default() {
                out.push(w[VNET_HDR_LEN..].to_vec());
            } else {
                let segs = split_all(w).unwrap();
                prop_assert!(segs.len() >= 2);
                for s in &segs {
                    prop_assert!(ipv4_header_ok(s) && l4_checksum_ok(s));
                }
                out.extend(segs);
            }
        }
        // Nothing lost, nothing invented.
        let mut a: Vec<&Vec<u8>> = pushed.iter().map(|(_, p)| p).collect();
        let mut b: Vec<&Vec<u8>> = out.iter().collect();
        a.sort();
        b.sort();
        prop_assert_eq!(a, b);
        // Per-flow order (for unmodified packets, which are all distinct).
        let position: HashMap<&Vec<u8>, usize> = out.iter().enumerate().map(|(i, p)| (p, i)).collect();
        for k in 0..flows.len() {
            let positions: Vec<usize> = pushed
                .iter()
                .filter(|(f, _)| *f == Some(k))
                .map(|(_, p)| position[p])
                .collect();
            prop_assert!(positions.windows(2).all(|w| w[0] < w[1]), "flow {} reordered", k);
        }
    }
}
