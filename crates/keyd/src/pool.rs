//! Ephemeral keys made ahead of time, while keyd is idle, so that answering an initiation
//! or starting a handshake does not also pay for the fixed-base scalar multiplication that
//! makes a fresh key pair (one of the four X25519 operations of a response).
//!
//! The whitepaper's rules on ephemeral keys still hold: each key is random, used for exactly
//! one handshake message and wiped with that handshake; what changes is only *when* it is
//! generated. The pool also bounds how long a key may wait unused ([`MAX_AGE`]) and is
//! emptied (wiped) when the local static key changes, so no key outlives the identity it
//! was made under, although an ephemeral key does not depend on it. Under a handshake
//! flood the pool simply runs dry and keys are made on demand as before: refilling runs
//! only when no work waits, one key at a time, so it never delays a real message.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::CryptoRng;
use wg_handshake::Ephemeral;

/// Keys kept ready. A handful covers a burst of first contacts (each response and each
/// initiation takes one); more would only hold secrets in memory for nothing.
pub const CAPACITY: usize = 8;

/// A key made this long ago is wiped instead of used: ready keys are short-lived secrets,
/// like the handshakes they serve (REKEY_TIMEOUT, the time one handshake attempt gets).
pub const MAX_AGE: Duration = Duration::from_secs(5);

/// How long keyd stays idle before it fills the pool again: a refill right after each
/// message would compete with the next message of a burst.
pub const REFILL_AFTER_IDLE: Duration = Duration::from_millis(1);

/// Ready ephemeral keys, oldest first, with the time each was made.
#[derive(Default)]
pub struct EphemeralPool {
    ready: VecDeque<(Ephemeral, Instant)>,
    /// Whether refilling is allowed at all (off: every key is made on demand).
    enabled: bool,
    /// Whether keys are in demand: set when one is taken or the pool is (re)armed, cleared
    /// when keys go stale unused. An idle daemon thus makes one poolful, wipes it after
    /// [`MAX_AGE`] and then sleeps, instead of waking every few seconds to make more.
    in_demand: bool,
}

impl std::fmt::Debug for EphemeralPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EphemeralPool")
            .field("ready", &self.ready.len())
            .field("enabled", &self.enabled)
            .field("in_demand", &self.in_demand)
            .finish()
    }
}

impl EphemeralPool {
    /// An empty pool that refills when asked to.
    pub fn new() -> Self {
        EphemeralPool {
            ready: VecDeque::with_capacity(CAPACITY),
            enabled: true,
            in_demand: true,
        }
    }

    /// A pool that never holds keys: every key is made on demand.
    pub fn disabled() -> Self {
        EphemeralPool {
            ready: VecDeque::new(),
            enabled: false,
            in_demand: false,
        }
    }

    /// A key for one handshake message: the newest ready one that is still fresh (stale
    /// ones are wiped on the way), else a new one from `rng`.
    pub fn take<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) -> Ephemeral {
        self.expire(now);
        self.in_demand = true;
        match self.ready.pop_back() {
            Some((key, _)) => key,
            None => Ephemeral::generate(rng),
        }
    }

    /// Wipes the keys older than [`MAX_AGE`]; keys that went stale unused end the demand.
    pub fn expire(&mut self, now: Instant) {
        while self
            .ready
            .front()
            .is_some_and(|(_, made)| now.saturating_duration_since(*made) >= MAX_AGE)
        {
            self.ready.pop_front();
            self.in_demand = false;
        }
    }

    /// Whether an idle moment should be spent making a key.
    pub fn wants_refill(&self) -> bool {
        self.enabled && self.in_demand && self.ready.len() < CAPACITY
    }

    /// Makes one key (call while idle; one at a time keeps each idle slice short).
    pub fn refill_one<R: CryptoRng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        self.expire(now);
        if self.wants_refill() {
            self.ready.push_back((Ephemeral::generate(rng), now));
        }
    }

    /// Wipes every ready key (the static key changed, or the device was reset) and
    /// makes a new poolful wanted: a new identity is usually followed by handshakes.
    pub fn clear(&mut self) {
        self.ready.clear();
        self.in_demand = true;
    }

    /// How many keys are ready (fresh or not yet expired).
    pub fn len(&self) -> usize {
        self.ready.len()
    }

    /// The public halves of the ready keys, oldest first.
    pub fn publics(&self) -> Vec<[u8; 32]> {
        self.ready.iter().map(|(key, _)| *key.public()).collect()
    }

    /// Whether no key is ready.
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }

    /// When the oldest ready key goes stale, if any (keyd wipes it then, even when idle).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.ready.front().map(|(_, made)| *made + MAX_AGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn fills_to_capacity_and_no_further() {
        let mut pool = EphemeralPool::new();
        let mut rng = rng();
        let now = Instant::now();
        for _ in 0..CAPACITY * 2 {
            pool.refill_one(now, &mut rng);
        }
        assert_eq!(pool.len(), CAPACITY);
        assert!(!pool.wants_refill());
    }

    #[test]
    fn each_key_is_handed_out_once() {
        let mut pool = EphemeralPool::new();
        let mut rng = rng();
        let now = Instant::now();
        for _ in 0..CAPACITY {
            pool.refill_one(now, &mut rng);
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..CAPACITY * 3 {
            assert!(seen.insert(*pool.take(now, &mut rng).public()));
        }
        assert!(pool.is_empty());
    }

    #[test]
    fn stale_keys_are_wiped_not_used() {
        let mut pool = EphemeralPool::new();
        let mut rng = rng();
        let t0 = Instant::now();
        pool.refill_one(t0, &mut rng);
        let old = *pool.take(t0, &mut rng).public();
        pool.refill_one(t0, &mut rng);
        let stale = pool.ready.back().map(|(k, _)| *k.public());
        let later = t0 + MAX_AGE;
        let taken = *pool.take(later, &mut rng).public();
        assert_ne!(Some(taken), stale, "a key made MAX_AGE ago was used");
        assert_ne!(taken, old);
        assert!(pool.is_empty());
        assert_eq!(pool.next_expiry(), None);
    }

    #[test]
    fn keys_that_went_stale_unused_are_not_replaced_until_one_is_taken() {
        let mut pool = EphemeralPool::new();
        let mut rng = rng();
        let t0 = Instant::now();
        while pool.wants_refill() {
            pool.refill_one(t0, &mut rng);
        }
        let idle = t0 + MAX_AGE;
        pool.expire(idle);
        assert!(pool.is_empty());
        assert!(
            !pool.wants_refill(),
            "an idle daemon must not keep making keys"
        );
        assert_eq!(pool.next_expiry(), None, "nothing left to wake up for");
        let _ = pool.take(idle, &mut rng);
        assert!(pool.wants_refill(), "a handshake makes keys wanted again");
    }

    #[test]
    fn expiry_is_reported_and_applied_oldest_first() {
        let mut pool = EphemeralPool::new();
        let mut rng = rng();
        let t0 = Instant::now();
        pool.refill_one(t0, &mut rng);
        pool.refill_one(t0 + Duration::from_secs(2), &mut rng);
        assert_eq!(pool.next_expiry(), Some(t0 + MAX_AGE));
        pool.expire(t0 + MAX_AGE);
        assert_eq!(pool.len(), 1);
        assert_eq!(
            pool.next_expiry(),
            Some(t0 + Duration::from_secs(2) + MAX_AGE)
        );
    }

    #[test]
    fn clearing_wipes_everything_and_a_disabled_pool_never_fills() {
        let mut pool = EphemeralPool::new();
        let mut rng = rng();
        let now = Instant::now();
        pool.refill_one(now, &mut rng);
        pool.clear();
        assert!(pool.is_empty());
        let mut off = EphemeralPool::disabled();
        off.refill_one(now, &mut rng);
        assert!(off.is_empty() && !off.wants_refill());
        // It still hands out keys, made on demand.
        let _ = off.take(now, &mut rng);
    }
}
