//! Fuzzes `wg_offload::Gro`, the TUN write path: a sequence of decrypted packets (peer
//! controlled bytes), flushed whenever full and at the end. It must never panic; every
//! merged write must split back into packets that were pushed, with verified checksums,
//! and nothing pushed may be lost or invented.
//!
//! Input: records of `[control, len, bytes...]`. Control bit 0 asks the target to fix the
//! record's IP/TCP lengths and checksums first (random bytes almost never have valid
//! ones, and only valid segments are merged); bit 1 flushes before the record; bit 2 makes
//! the record the payload of a segment that follows the previous packet (its headers, the
//! next sequence number and IPv4 ID) and fixes it up, so that merges are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wg_offload::{
    Gro, MAX_GRO_WRITE_LEN, VNET_HDR_LEN, VirtioNetHdr, checksum, pseudo_header_checksum, split,
};

/// Makes an IPv4 (no options) or IPv6 TCP packet's lengths and checksums consistent.
fn fix_up(p: &mut [u8]) {
    let len = p.len();
    let (l4, v6) = match p.first().map(|b| b >> 4) {
        Some(4) if len >= 40 => {
            p[0] = 0x45;
            p[9] = 6;
            p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            p[10..12].copy_from_slice(&[0, 0]);
            let c = !checksum(&p[..20], 0);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            (20, false)
        }
        Some(6) if len >= 60 => {
            p[6] = 6;
            p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
            (40, true)
        }
        _ => return,
    };
    let words = (p[l4 + 12] >> 4).clamp(5, ((len - l4) / 4).min(15) as u8);
    p[l4 + 12] = (words << 4) | (p[l4 + 12] & 0x0f);
    p[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let (src, dst) = if v6 {
        (8..24, 24..40)
    } else {
        (12..16, 16..20)
    };
    let pseudo = pseudo_header_checksum(&p[src], &p[dst], 6, (len - l4) as u32);
    let c = !checksum(&p[l4..], u32::from(pseudo));
    p[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
}

/// The previous packet's IP and TCP headers, with the next sequence number and IPv4 ID,
/// followed by `payload`; just `payload` if the previous packet has no such headers.
fn follow(prev: &[u8], payload: &[u8]) -> Vec<u8> {
    let l4 = match prev.first().map(|b| b >> 4) {
        Some(4) => usize::from(prev[0] & 0x0f) * 4,
        Some(6) => 40,
        _ => return payload.to_vec(),
    };
    let Some(&offset) = prev.get(l4 + 12) else {
        return payload.to_vec();
    };
    let hdr_len = l4 + usize::from((offset >> 4).max(5)) * 4;
    if l4 < 20 || prev.len() < hdr_len {
        return payload.to_vec();
    }
    let mut p = prev[..hdr_len].to_vec();
    p.extend_from_slice(payload);
    let seq = u32::from_be_bytes(prev[l4 + 4..l4 + 8].try_into().expect("4 bytes"));
    let next = seq.wrapping_add((prev.len() - hdr_len) as u32);
    p[l4 + 4..l4 + 8].copy_from_slice(&next.to_be_bytes());
    if l4 != 40 {
        let id = u16::from_be_bytes([prev[4], prev[5]]).wrapping_add(1);
        p[4..6].copy_from_slice(&id.to_be_bytes());
    }
    p
}

fn drain(gro: &mut Gro, out: &mut Vec<Vec<u8>>) {
    gro.flush(|w| {
        assert!(w.len() >= VNET_HDR_LEN);
        let hdr = VirtioNetHdr::parse(w).expect("header");
        if hdr == VirtioNetHdr::default() {
            out.push(w[VNET_HDR_LEN..].to_vec());
            return;
        }
        assert!(w.len() <= MAX_GRO_WRITE_LEN, "merged write too long");
        let mut segs: Vec<Vec<u8>> = Vec::new();
        split(w, &mut segs).expect("a merged write must split");
        assert!(segs.len() >= 2);
        out.extend(segs);
    });
}

fuzz_target!(|data: &[u8]| {
    let mut gro = Gro::new();
    let mut pushed: Vec<Vec<u8>> = Vec::new();
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut rest = data;
    while let [control, len, tail @ ..] = rest {
        let take = usize::from(*len).min(tail.len());
        let mut packet = tail[..take].to_vec();
        rest = &tail[take..];
        if control & 2 != 0 {
            drain(&mut gro, &mut out);
        }
        if control & 4 != 0 {
            if let Some(prev) = pushed.last() {
                packet = follow(prev, &packet);
            }
        }
        if control & 5 != 0 {
            fix_up(&mut packet);
        }
        gro.push(&packet);
        pushed.push(packet);
        if gro.is_full() {
            drain(&mut gro, &mut out);
        }
    }
    drain(&mut gro, &mut out);
    assert!(gro.is_empty());
    assert_eq!(gro.stats().dropped_full, 0);
    pushed.sort();
    out.sort();
    assert_eq!(pushed, out, "GRO lost, changed or invented a packet");
});
