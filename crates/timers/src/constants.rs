//! Protocol limits and times from the whitepaper's section 6.1 (wireguard-go
//! `device/constants.go`). The values live in `wg-wire`, shared with the router, so the
//! two can never disagree; only the derived retransmission count is defined here.

pub use wg_wire::constants::{
    KEEPALIVE_TIMEOUT, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX,
};

/// Retransmissions per handshake attempt: `REKEY_ATTEMPT_TIME / REKEY_TIMEOUT` (18).
///
/// As in wireguard-go and the Linux kernel the retransmit timer gives up only once the
/// attempt counter *exceeds* this, which happens after `MAX_TIMER_HANDSHAKES + 1`
/// retransmissions, that is `MAX_TIMER_HANDSHAKES + 2` initiations in all.
pub const MAX_TIMER_HANDSHAKES: u32 =
    (REKEY_ATTEMPT_TIME.as_secs() / REKEY_TIMEOUT.as_secs()) as u32;

const _: () = assert!(MAX_TIMER_HANDSHAKES == 18);
