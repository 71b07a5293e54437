//! WireGuard's timer rules (whitepaper section 6, with the exact semantics of wireguard-go's
//! `device/timers.go`) as a per-peer state machine that never reads a clock.
//!
//! **Owns:** for one peer, the five timers of section 6 — handshake retransmission, keepalive
//! after received data, new handshake after unanswered data, key-material zeroing and the
//! persistent keepalive — plus the handshake attempt counter, the "last-minute handshake"
//! flag and the rate limit of one handshake message per [`REKEY_TIMEOUT`]. It decides *when*
//! to send an initiation or a keepalive, to give up or to erase keys; it never sees a packet,
//! a key or a socket.
//!
//! **Trusts:** its driver (datad) to report every event through the hooks of [`PeerTimers`],
//! named after wireguard-go's `timers*` functions, to pass a `now` that never goes backwards,
//! and to carry out each [`TimerAction`] it is handed. Nothing here comes from the network
//! directly, so there is nothing to parse and nothing to reject.
//!
//! **May depend on:** `wg-wire` (the protocol constants) and `rand_core` (the
//! retransmission jitter only). No clock (every call that needs the time takes
//! `now: Instant`), no I/O, no threads, no allocation.
//!
//! # Driving it
//!
//! Feed events as they happen, then drain [`PeerTimers::poll`] and sleep until
//! [`PeerTimers::next_deadline`]:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use rand::{SeedableRng, rngs::StdRng};
//! use wg_timers::{PeerTimers, TimerAction};
//!
//! let mut rng = StdRng::seed_from_u64(1);
//! let mut timers = PeerTimers::new(None);
//! let t0 = Instant::now();
//!
//! // A packet for this peer arrived from the TUN device but there is no session yet.
//! if timers.want_handshake(t0) {
//!     // ... ask keyd for an initiation and send it, then:
//!     timers.authenticated_packet_traversal(t0);
//!     timers.authenticated_packet_sent(t0);
//!     timers.handshake_initiated(t0, &mut rng);
//! }
//!
//! // No response: the driver wakes at the deadline and retransmits.
//! let wake = timers.next_deadline().unwrap();
//! assert!(wake >= t0 + Duration::from_secs(5));
//! assert_eq!(timers.poll(wake), Some(TimerAction::SendInitiation { retry: true }));
//! assert_eq!(timers.poll(wake), None);
//! ```
#![forbid(unsafe_code)]

mod constants;
mod peer_timers;

pub use constants::{
    KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
};
pub use peer_timers::{PeerTimers, TimerAction};
