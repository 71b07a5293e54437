//! Protocol limits and times from the whitepaper's section 6.1, shared by the router (which
//! enforces the message and age limits per packet) and the timers (which schedule by them);
//! and the configuration limit every process of the daemon agrees on.

use std::time::Duration;

/// After this many messages on a keypair the initiator starts a new handshake.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// A keypair is never used for more than this many messages (2^64 - 2^13 - 1).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// After this long the initiator of a keypair starts a new handshake when sending.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A keypair older than this is never used to send or receive.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// A handshake is retried for this long, then abandoned until new data wants a session.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// A handshake initiation is retransmitted after this long without a response.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of the random jitter added to each retransmission.
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// A keepalive answers received data after this long without sending anything.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most allowed IPs a device holds (all peers together): what UAPI accepts
/// (`wg_uapi::Limits::DEFAULT`), what keyd sends the data plane in chunks, and what the data
/// plane takes for one peer. Not from the whitepaper: a bound on memory, several times a
/// country-sized route list.
pub const MAX_ALLOWED_IPS: usize = 1 << 20;
