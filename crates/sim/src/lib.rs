//! A deterministic, virtual-time simulation of WireGuard interfaces built from the real
//! sans-IO cores, in the manner of quinn-proto's `Pair::step`: no sockets, no threads, no
//! real clock.
//!
//! **Owns:** the glue only. A [`Node`] is the data-plane core the daemon's datad drives
//! (`wg-device`) and the handshake oracle its keyd drives (`wg-keyd`'s `Handshakes`), joined
//! by a synchronous message pump where the daemon has IPC; a lossy, jittery, duplicating,
//! reordering [`Network`]; and a [`Sim`] of two nodes that advances a virtual clock from
//! event to event. No protocol logic lives here: a bug the simulation finds is fixed once,
//! in the crate the daemon runs.
//!
//! **Trusts:** the crates it drives; it exists to test them together. Test-only: it is not
//! published and nothing but tests may depend on it.
//!
//! **May depend on:** `wg-device`, `wg-keyd` (its oracle), `wg-messages`, `wg-wire`,
//! `wg-cookie`, `wg-handshake` (keys, and forging messages in tests), `wg-router`,
//! `wg-timers`, `ipnet`, `rand` (seeded `StdRng` only), `zeroize`, `thiserror`.
//!
//! # Determinism
//! Every random choice (keys, indices, ephemerals, jitter, loss) comes from `StdRng`s seeded
//! from [`SimConfig::seed`]. Time is an `Instant` taken once at construction and then only
//! advanced by additions; wall-clock time (the TAI64N timestamps of initiations) is a fixed
//! `SystemTime` plus the virtual time elapsed. The same seed and the same calls replay the
//! same run, datagram for datagram.
//!
//! ```
//! use std::time::Duration;
//! use wg_sim::{Side, Sim, SimConfig};
//!
//! let mut sim = Sim::new(SimConfig::default());
//! let id = sim.send(Side::A); // staged; A starts a handshake
//! sim.run_for(Duration::from_secs(1));
//! assert_eq!(sim.node(Side::B).delivered_count(id), 1);
//! ```
#![forbid(unsafe_code)]

mod clock;
mod network;
mod node;
mod packet;
mod record;
mod sim;
mod star;

pub use clock::Clock;
pub use network::{Capture, Datagram, LinkConditions, Network, NetworkStats};
pub use node::{KEYD_HANDSHAKE_COST, Node, NodeConfig};
pub use packet::{INNER_PACKET_LEN, inner_packet, payload_id};
pub use record::{Counters, Event, EventKind, Receipt, Rejection, SendOutcome};
pub use sim::{Side, Sim, SimConfig};
pub use star::{Star, StarConfig};
