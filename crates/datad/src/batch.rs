//! The outbound batch: fixed-size slots, each with room for the transport header before
//! the plaintext and for padding and the tag after it, so a packet is split out of a TUN
//! super-packet, routed, sealed in place and handed to `sendmsg` without another copy.

use wg_router::{HEADROOM, TAILROOM};

/// Largest IP packet a slot holds: any TUN MTU (the kernel allows up to 65535).
pub(crate) const MAX_PACKET: usize = 65535;
/// Bytes per slot. Only the pages a packet touches become resident, so a large stride
/// costs address space, not memory.
pub(crate) const SLOT: usize = HEADROOM + MAX_PACKET + TAILROOM;
/// Slots per batch: two TSO super-packets of up to 64 segments each, or 128 small packets.
pub(crate) const SLOTS: usize = 128;
/// Most slots a batch grows to for one super-packet with a tiny MSS: 64 KiB in segments
/// of Linux's smallest MSS (88 bytes) is about 745.
pub(crate) const MAX_SLOTS: usize = 1024;
/// Plaintext bytes after which a batch is sent rather than grown: any super-packet, or a
/// few dozen small packets. Sending each super-packet as soon as it is sealed keeps both
/// tunnel ends busy at once (3-9 % more TCP goodput than gathering 32 KiB, in alternating
/// runs), while small packets still share one segmented send.
pub(crate) const SEND_AFTER_BYTES: usize = 4 * 1024;
/// Free slots needed before reading another packet from the TUN device (a super-packet
/// splits into at most this many wire-sized segments at the smallest useful MSS).
pub(crate) const ROOM_FOR_ONE_READ: usize = 64;

/// Packets waiting to be sealed and sent, in the order they were read.
pub(crate) struct OutBatch {
    buf: Vec<u8>,
    lens: Vec<usize>,
    slots: usize,
    bytes: usize,
}

impl OutBatch {
    pub(crate) fn new() -> Self {
        OutBatch {
            buf: vec![0; SLOT * SLOTS],
            lens: Vec::with_capacity(SLOTS),
            slots: SLOTS,
            bytes: 0,
        }
    }

    /// Makes room for a read that splits into `segments` packets, if the batch is empty
    /// and that is within [`MAX_SLOTS`]; returns whether it fits now. (A fresh zeroed
    /// allocation: its pages become resident only when used.)
    pub(crate) fn make_room_for(&mut self, segments: usize) -> bool {
        if segments <= self.slots - self.lens.len() {
            return true;
        }
        if !self.lens.is_empty() || segments > MAX_SLOTS {
            return false;
        }
        self.buf = vec![0; SLOT * segments];
        self.slots = segments;
        true
    }

    /// How many packets are in the batch.
    pub(crate) fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether another TUN read (up to [`ROOM_FOR_ONE_READ`] segments) fits and the batch
    /// is still smaller than [`SEND_AFTER_BYTES`].
    pub(crate) fn has_room_for_a_read(&self) -> bool {
        self.slots - self.lens.len() >= ROOM_FOR_ONE_READ && self.bytes < SEND_AFTER_BYTES
    }

    /// Forgets packets from `len` on (a split that failed half-way).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.lens.truncate(len);
        self.bytes = self.lens.iter().sum();
    }

    /// Empties the batch; the memory stays for the next one.
    pub(crate) fn clear(&mut self) {
        self.lens.clear();
        self.bytes = 0;
    }

    /// Packet `i`'s plaintext.
    pub(crate) fn plaintext(&self, i: usize) -> &[u8] {
        let len = self.lens.get(i).copied().unwrap_or(0);
        self.buf
            .get(i * SLOT + HEADROOM..i * SLOT + HEADROOM + len)
            .unwrap_or_default()
    }

    /// Packet `i`'s whole slot: header room, plaintext, room for padding and tag.
    #[cfg(test)]
    pub(crate) fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        self.buf
            .get_mut(i * SLOT..(i + 1) * SLOT)
            .unwrap_or_default()
    }

    /// The slots of every packet in the batch, [`SLOT`] bytes each.
    pub(crate) fn slots_mut(&mut self) -> &mut [u8] {
        let end = self.lens.len() * SLOT;
        self.buf.get_mut(..end).unwrap_or_default()
    }

    /// Packet `i`'s first `len` slot bytes (after sealing: the transport message).
    pub(crate) fn message(&self, i: usize, len: usize) -> &[u8] {
        self.buf
            .get(i * SLOT..i * SLOT + len.min(SLOT))
            .unwrap_or_default()
    }
}

impl wg_offload::SegmentSink for OutBatch {
    fn next_segment(&mut self, len: usize) -> Option<&mut [u8]> {
        let i = self.lens.len();
        if i >= self.slots || len > MAX_PACKET {
            return None;
        }
        self.lens.push(len);
        self.bytes += len;
        self.buf
            .get_mut(i * SLOT + HEADROOM..i * SLOT + HEADROOM + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wg_offload::SegmentSink;

    #[test]
    fn slots_keep_room_around_each_packet_and_refuse_when_full() {
        let mut batch = OutBatch::new();
        for i in 0..SLOTS {
            let seg = batch.next_segment(100).unwrap();
            seg.fill(i as u8);
        }
        assert!(batch.next_segment(1).is_none());
        assert_eq!(batch.len(), SLOTS);
        assert!(!batch.has_room_for_a_read());
        batch.clear();
        // A super-packet's worth of bytes is sent even with slots to spare.
        for _ in 0..(SEND_AFTER_BYTES / 1400) {
            batch.next_segment(1400).unwrap();
        }
        assert!(batch.has_room_for_a_read());
        batch.next_segment(1400).unwrap();
        assert!(!batch.has_room_for_a_read());
        batch.truncate(1);
        assert!(batch.has_room_for_a_read());
        batch.clear();
        for i in 0..SLOTS {
            batch.next_segment(100).unwrap().fill(i as u8);
        }
        assert!(batch.plaintext(3).iter().all(|&b| b == 3));
        assert_eq!(batch.slot_mut(3).len(), SLOT);
        assert!(
            batch.slot_mut(3)[HEADROOM..HEADROOM + 100]
                .iter()
                .all(|&b| b == 3)
        );
        batch.truncate(2);
        assert_eq!(batch.len(), 2);
        batch.clear();
        assert!(batch.has_room_for_a_read());
        assert!(batch.next_segment(MAX_PACKET + 1).is_none());
    }

    #[test]
    fn an_empty_batch_grows_for_a_super_packet_with_a_tiny_mss() {
        let mut batch = OutBatch::new();
        assert!(batch.make_room_for(SLOTS));
        batch.next_segment(88).unwrap();
        assert!(!batch.make_room_for(SLOTS), "only an empty batch grows");
        batch.clear();
        assert!(batch.make_room_for(745));
        for _ in 0..745 {
            batch.next_segment(88).unwrap();
        }
        assert!(batch.next_segment(88).is_none());
        batch.clear();
        assert!(!batch.make_room_for(MAX_SLOTS + 1));
    }
}
