//! Protocol limits and times from the whitepaper's section 6.1 (wireguard-go
//! `device/constants.go`).
//!
//! `wg-wire` carries the same values for the router; they are repeated here because this
//! crate may depend on nothing but `rand_core`, and the timer rules are defined by them.

use std::time::Duration;

/// After this many messages on a keypair the initiator starts a new handshake (2^60).
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// A keypair is never used for more than this many messages (2^64 - 2^13 - 1).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// After this long the initiator of a keypair starts a new handshake when sending.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A keypair older than this is never used to send or receive.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// A handshake is retried for about this long, then abandoned until new data wants a session.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// A handshake initiation is retransmitted after this long without a response, and no two
/// initiations leave closer together than this.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound (inclusive) of the random jitter added to a retransmission or new-handshake
/// deadline, so that peers that lost packets together do not retry in lockstep.
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// A keepalive answers received data after this long without sending anything.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retransmissions per handshake attempt: `REKEY_ATTEMPT_TIME / REKEY_TIMEOUT` (18).
///
/// As in wireguard-go and the Linux kernel the retransmit timer gives up only once the
/// attempt counter *exceeds* this, which happens after `MAX_TIMER_HANDSHAKES + 1`
/// retransmissions, that is `MAX_TIMER_HANDSHAKES + 2` initiations in all.
pub const MAX_TIMER_HANDSHAKES: u32 = (REKEY_ATTEMPT_TIME.as_secs() / REKEY_TIMEOUT.as_secs()) as u32;

const _: () = assert!(MAX_TIMER_HANDSHAKES == 18);
