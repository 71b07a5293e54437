//! TUN offloads, sans-IO: the Linux virtio-net header, TSO/USO segmentation of what the
//! kernel reads out, and TCP receive coalescing (GRO) of what the data plane writes in.
//!
//! The TUN device is opened with `IFF_VNET_HDR` and `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 |
//! TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6)`, so every read and write starts with a 10-byte
//! [`VirtioNetHdr`] and a read may be a TCP or UDP "super-packet" of up to 64 KiB with only a
//! partial checksum.
//!
//! **Owns:** the virtio-net header layout ([`VirtioNetHdr`]); [`split`], which turns one TUN
//! read into wire-sized IP packets with complete checksums; [`Gro`], which merges decrypted
//! TCP segments of one flow into super-packets the way Linux GRO would and emits each
//! pending write with its header; and the RFC 1071 checksum arithmetic ([`checksum`],
//! [`pseudo_header_checksum`]).
//!
//! **Trusts:** [`split`]'s input comes from the local kernel, but it is still checked before
//! use and a malformed read is an error, never a panic. [`Gro::push`] input is a decrypted
//! packet: authenticated, but its bytes are chosen by the peer, so any bytes are accepted
//! without panicking, a packet is merged only if it passes every check (including its IPv4
//! header and TCP checksums, as Linux GRO checks them, because the merged packet is handed to
//! the kernel as "checksum to be completed" and the kernel would not check them again), and
//! memory stays bounded (at most [`Gro::MAX_PENDING`] writes of at most
//! [`MAX_GRO_WRITE_LEN`] bytes each, plus whatever single oversized packet was pushed).
//!
//! **May depend on:** `std` and `thiserror` only (`proptest` for tests). No I/O, no clock, no
//! threads, no allocation per packet once buffers have grown.
#![forbid(unsafe_code)]
#![deny(clippy::indexing_slicing)]

mod checksum;
mod gro;
mod ip;
mod split;
mod vnet;

pub use checksum::{checksum, pseudo_header_checksum};
pub use gro::{Gro, GroStats, MAX_GRO_WRITE_LEN};
pub use split::{SegmentSink, split};
pub use vnet::{
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR_LEN, VirtioNetHdr,
};

/// Why a TUN read could not be turned into packets, or a header not parsed or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// A buffer is shorter than what must be read from or written into it.
    #[error("{what} needs {needed} bytes but only {got} are there")]
    Truncated {
        /// What was being read or written.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// The virtio-net GSO type is not one this crate segments (UFO, or unknown).
    #[error("unsupported virtio-net GSO type {0:#04x} (only none, TCPv4, TCPv6 and UDP L4)")]
    UnsupportedGsoType(u8),
    /// A GSO packet with a segment size of zero.
    #[error("GSO packet with gso_size 0")]
    ZeroGsoSize,
    /// The IP version nibble does not match the GSO type (or is neither 4 nor 6).
    #[error("IP version {version} cannot carry virtio-net GSO type {gso_type:#04x}")]
    IpVersionMismatch {
        /// The packet's IP version nibble.
        version: u8,
        /// The header's GSO type, without the ECN bit.
        gso_type: u8,
    },
    /// The IP header's length field disagrees with the packet's length.
    #[error("IP header says the packet is {header} bytes but it is {actual}")]
    LengthMismatch {
        /// Length the IP header claims (IPv4 total length, IPv6 payload length + 40).
        header: usize,
        /// Bytes actually read.
        actual: usize,
    },
    /// `csum_start` does not point at the transport header.
    #[error("csum_start {csum_start} does not point at the transport header (at {l4_offset})")]
    BadCsumStart {
        /// The header's `csum_start`.
        csum_start: u16,
        /// Where the transport header is.
        l4_offset: usize,
    },
    /// The checksum field `csum_start + csum_offset` is outside the packet, or not where the
    /// transport protocol keeps its checksum.
    #[error(
        "checksum field at csum_start {csum_start} + csum_offset {csum_offset} is invalid for a {len}-byte packet"
    )]
    BadCsumOffset {
        /// The header's `csum_start`.
        csum_start: u16,
        /// The header's `csum_offset`.
        csum_offset: u16,
        /// Packet length without the virtio-net header.
        len: usize,
    },
    /// Something else in the IP or transport header that segmentation cannot work with.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The sink had no room for every segment. The sink holds `written` segments of this
    /// read that must not be sent.
    #[error("segment sink full after {written} of {segments} segments (discard them)")]
    SinkFull {
        /// Segments already written into the sink for this read.
        written: usize,
        /// Segments the read needed.
        segments: usize,
    },
    /// The sink returned a slot of the wrong size (a bug in the sink).
    #[error("segment sink returned a {got}-byte slot for a {requested}-byte segment")]
    SinkSlotSize {
        /// Length asked for.
        requested: usize,
        /// Length of the slot returned.
        got: usize,
    },
}
