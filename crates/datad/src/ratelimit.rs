//! Per-source token buckets for handshake messages under load, as wireguard-go's
//! `ratelimiter` does: 20 messages per second per IP address with a burst of 5, so one
//! flooding address cannot starve the handshakes of everyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const PACKETS_PER_SECOND: u64 = 20;
const BURST: u64 = 5;
const TOKEN_NS: u64 = 1_000_000_000 / PACKETS_PER_SECOND;
const MAX_TOKENS: u64 = TOKEN_NS * BURST;
/// Entries idle this long are dropped, bounding the table.
const IDLE: Duration = Duration::from_secs(1);
/// Hard cap on tracked sources; beyond it new sources are refused until a sweep.
const MAX_ENTRIES: usize = 1 << 16;

#[derive(Debug)]
struct Bucket {
    tokens_ns: u64,
    last: Instant,
}

/// The rate limiter.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: HashMap<IpAddr, Bucket>,
    last_sweep: Option<Instant>,
}

impl RateLimiter {
    /// Whether a handshake message from `ip` may be processed now.
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= IDLE)
        {
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.last) < IDLE);
            self.last_sweep = Some(now);
        }
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_ENTRIES {
            return false;
        }
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens_ns: MAX_TOKENS,
            last: now,
        });
        let elapsed = u64::try_from(now.saturating_duration_since(bucket.last).as_nanos())
            .unwrap_or(u64::MAX);
        bucket.tokens_ns = bucket.tokens_ns.saturating_add(elapsed).min(MAX_TOKENS);
        bucket.last = now;
        if bucket.tokens_ns >= TOKEN_NS {
            bucket.tokens_ns -= TOKEN_NS;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_twenty_per_second_per_address() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let allowed = (0..100).filter(|_| rl.allow(a, t0)).count();
        assert_eq!(allowed, 5, "burst of 5");
        assert!(rl.allow(b, t0), "other addresses are unaffected");
        let later = t0 + Duration::from_millis(500);
        let allowed = (0..100).filter(|_| rl.allow(a, later)).count();
        assert_eq!(
            allowed, 5,
            "0.5 s refills 10 tokens, capped at the burst of 5"
        );
        let soon = later + Duration::from_millis(100);
        assert_eq!((0..100).filter(|_| rl.allow(a, soon)).count(), 2);
    }
}
