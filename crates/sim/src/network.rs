//! The simulated network: datagrams in flight with delivery times, under per-destination
//! latency, jitter, loss, duplication and reordering, all drawn from a seeded RNG.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// One UDP datagram.
#[derive(Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Sender's address.
    pub from: SocketAddr,
    /// Destination address.
    pub to: SocketAddr,
    /// UDP payload: a WireGuard message.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Datagram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datagram")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("type", &self.bytes.first())
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// How a path toward one destination treats datagrams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConditions {
    /// Fixed one-way delay.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` for every datagram.
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram that was not lost is delivered twice (each copy with its
    /// own delay).
    pub duplicate: f64,
    /// Probability that a datagram is held back by an extra delay drawn uniformly from
    /// `[0, reorder_delay]`, so that later datagrams overtake it.
    pub reorder: f64,
    /// Upper bound of the reordering delay.
    pub reorder_delay: Duration,
}

impl LinkConditions {
    /// A clean path: 10 ms one way, nothing lost, duplicated or reordered.
    pub const CLEAN: Self = Self {
        latency: Duration::from_millis(10),
        jitter: Duration::ZERO,
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_delay: Duration::ZERO,
    };

    /// A path that loses everything.
    pub const BLACK_HOLE: Self = Self {
        loss: 1.0,
        ..Self::CLEAN
    };

    /// These conditions with loss probability `loss`.
    pub fn with_loss(self, loss: f64) -> Self {
        Self { loss, ..self }
    }
}

impl Default for LinkConditions {
    fn default() -> Self {
        Self::CLEAN
    }
}

/// What happens to the datagrams a [`Capture`] selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Keep a copy; the datagram travels on as usual.
    Copy,
    /// Take the datagram off the network: it is never delivered, only captured.
    Divert,
}

/// Counters of what the network did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Datagrams lost.
    pub lost: u64,
    /// Extra copies scheduled by duplication.
    pub duplicated: u64,
    /// Datagrams taken off the network by a [`Capture::Divert`].
    pub diverted: u64,
    /// Datagrams (and copies) handed back for delivery.
    pub delivered: u64,
}

/// A datagram in flight and when it arrives; ordered so the heap pops the earliest first,
/// ties in sending order.
struct InFlight {
    at: Instant,
    seq: u64,
    datagram: Datagram,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Datagrams in flight between any addresses.
pub struct Network {
    default: LinkConditions,
    toward: HashMap<SocketAddr, LinkConditions>,
    in_flight: BinaryHeap<InFlight>,
    seq: u64,
    rng: StdRng,
    capture: Option<(Capture, Option<SocketAddr>)>,
    captured: Vec<Datagram>,
    stats: NetworkStats,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("default", &self.default)
            .field("toward", &self.toward)
            .field("in_flight", &self.in_flight.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// An empty network where every path has `conditions`, drawing from an RNG seeded with
    /// `seed`.
    pub fn new(conditions: LinkConditions, seed: u64) -> Self {
        Self {
            default: conditions,
            toward: HashMap::new(),
            in_flight: BinaryHeap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(seed),
            capture: None,
            captured: Vec::new(),
            stats: NetworkStats::default(),
        }
    }

    /// Sets the conditions of every path, forgetting per-destination ones. Datagrams
    /// already in flight keep their delivery times.
    pub fn set_conditions(&mut self, conditions: LinkConditions) {
        self.default = conditions;
        self.toward.clear();
    }

    /// Sets the conditions of the path toward `to` only.
    pub fn set_conditions_toward(&mut self, to: SocketAddr, conditions: LinkConditions) {
        self.toward.insert(to, conditions);
    }

    /// The conditions datagrams toward `to` meet.
    pub fn conditions_toward(&self, to: SocketAddr) -> LinkConditions {
        self.toward.get(&to).copied().unwrap_or(self.default)
    }

    /// Starts capturing datagrams sent from now on (toward `to` only, if given); `None`
    /// stops. Captured datagrams accumulate until [`take_captured`](Self::take_captured).
    pub fn capture(&mut self, mode: Option<Capture>, to: Option<SocketAddr>) {
        self.capture = mode.map(|m| (m, to));
    }

    /// The datagrams captured so far, in sending order.
    pub fn take_captured(&mut self) -> Vec<Datagram> {
        std::mem::take(&mut self.captured)
    }

    /// Counters so far.
    pub fn stats(&self) -> NetworkStats {
        self.stats
    }

    /// Datagrams in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Hands a datagram to the network at `now`.
    pub fn send(&mut self, datagram: Datagram, now: Instant) {
        self.stats.sent += 1;
        if let Some((mode, filter)) = self.capture
            && filter.is_none_or(|to| to == datagram.to)
        {
            self.captured.push(datagram.clone());
            if mode == Capture::Divert {
                self.stats.diverted += 1;
                return;
            }
        }
        let link = self.conditions_toward(datagram.to);
        if self.chance(link.loss) {
            self.stats.lost += 1;
            return;
        }
        if self.chance(link.duplicate) {
            self.stats.duplicated += 1;
            let at = now + self.delay(&link);
            self.schedule(at, datagram.clone());
        }
        let at = now + self.delay(&link);
        self.schedule(at, datagram);
    }

    /// When the next datagram arrives, if any is in flight.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.peek().map(|f| f.at)
    }

    /// The earliest datagram due at or before `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<Datagram> {
        if self.next_delivery()? > now {
            return None;
        }
        let flight = self.in_flight.pop()?;
        self.stats.delivered += 1;
        Some(flight.datagram)
    }

    /// Every datagram due at or before `now`, in arrival order.
    pub fn deliver_until(&mut self, now: Instant) -> Vec<Datagram> {
        std::iter::from_fn(|| self.pop_due(now)).collect()
    }

    fn schedule(&mut self, at: Instant, datagram: Datagram) {
        self.seq += 1;
        self.in_flight.push(InFlight {
            at,
            seq: self.seq,
            datagram,
        });
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p.clamp(0.0, 1.0))
    }

    fn uniform(&mut self, max: Duration) -> Duration {
        let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if max == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.rng.random_range(0..=max))
    }

    fn delay(&mut self, link: &LinkConditions) -> Duration {
        let mut delay = link.latency + self.uniform(link.jitter);
        if self.chance(link.reorder) {
            delay += self.uniform(link.reorder_delay);
        }
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(n: u8) -> Datagram {
        Datagram {
            from: "192.0.2.1:1".parse().unwrap_or_else(|_| unreachable!()),
            to: "192.0.2.2:2".parse().unwrap_or_else(|_| unreachable!()),
            bytes: vec![n],
        }
    }

    #[test]
    fn clean_path_delivers_in_order_after_the_latency() {
        let t0 = Instant::now();
        let mut net = Network::new(LinkConditions::CLEAN, 1);
        net.send(datagram(1), t0);
        net.send(datagram(2), t0);
        assert_eq!(net.next_delivery(), Some(t0 + Duration::from_millis(10)));
        assert!(net.deliver_until(t0 + Duration::from_millis(9)).is_empty());
        let got = net.deliver_until(t0 + Duration::from_millis(10));
        assert_eq!(got, vec![datagram(1), datagram(2)]);
    }

    #[test]
    fn loss_and_duplication_happen_at_about_their_rates() {
        let t0 = Instant::now();
        let conditions = LinkConditions {
            loss: 0.25,
            duplicate: 0.5,
            ..LinkConditions::CLEAN
        };
        let mut net = Network::new(conditions, 2);
        for _ in 0..10_000 {
            net.send(datagram(0), t0);
        }
        let s = net.stats();
        assert!((2_200..2_800).contains(&s.lost), "{s:?}");
        assert!((3_400..4_100).contains(&s.duplicated), "{s:?}");
        let delivered = net.deliver_until(t0 + Duration::from_secs(1)).len() as u64;
        assert_eq!(delivered, 10_000 - s.lost + s.duplicated);
    }
}
