//! Per-source token buckets for handshake messages under load, as wireguard-go's
//! `ratelimiter` does: 20 messages per second per source with a burst of 5, so one
//! flooding address cannot starve the handshakes of everyone else. A source is an IPv4
//! address or an IPv6 /64, as in the Linux kernel: one host usually owns a whole /64 and
//! could otherwise flood from 2^64 addresses.

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
        let ip = source_of(ip);
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

/// The rate limit's unit for `ip`: itself for IPv4 (and IPv4-mapped IPv6), its /64 for
/// IPv6.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
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

    #[test]
    fn an_ipv6_slash_64_is_one_source() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        let host = |i: u16| -> IpAddr { format!("2001:db8:1:2::{i:x}").parse().unwrap() };
        // 100 addresses of one /64 share one bucket (the kernel's rule).
        let allowed = (0..100).filter(|&i| rl.allow(host(i), t0)).count();
        assert_eq!(allowed, 5);
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(rl.allow(other, t0), "the next /64 is another source");
        // An IPv4-mapped address counts as its IPv4 address.
        let v4: IpAddr = [192, 0, 2, 9].into();
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!((0..10).filter(|_| rl.allow(v4, t0)).count(), 5);
        assert!(!rl.allow(mapped, t0));
    }
}
