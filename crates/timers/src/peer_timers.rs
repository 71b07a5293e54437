//! The per-peer timer state machine.

use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use rand_core::Rng;

use crate::constants::{
    KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, REJECT_AFTER_TIME, REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
};

/// Key material of a peer is erased after this long without a new session.
const ZERO_KEY_MATERIAL_AFTER: Duration = REJECT_AFTER_TIME.saturating_mul(3);
/// Data sent without anything heard back for this long (plus jitter) restarts the handshake.
const NEW_HANDSHAKE_AFTER: Duration = KEEPALIVE_TIMEOUT.saturating_add(REKEY_TIMEOUT);

/// What the driver must do now that a timer expired (returned by [`PeerTimers::poll`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerAction {
    /// Send a handshake initiation to the peer, then report it with
    /// [`PeerTimers::handshake_initiated`] (and, like any authenticated packet,
    /// [`PeerTimers::authenticated_packet_traversal`] and
    /// [`PeerTimers::authenticated_packet_sent`]).
    ///
    /// The rate limit is already applied: the driver sends without asking again.
    SendInitiation {
        /// `true` when this retransmits an unanswered initiation (the attempt counter was
        /// incremented); `false` when it starts a new attempt because data went unanswered
        /// for `KEEPALIVE_TIMEOUT + REKEY_TIMEOUT` (the attempt counter was reset).
        retry: bool,
    },
    /// Send a keepalive (an empty transport message) with the current keypair, unless data
    /// is already queued for the peer or there is no usable keypair (wireguard-go's
    /// `SendKeepalive` skips it then too), and report it like any authenticated packet.
    SendKeepalive,
    /// The handshake was retransmitted for [`REKEY_ATTEMPT_TIME`](crate::REKEY_ATTEMPT_TIME)
    /// and more without an answer: drop the packets staged for the peer and stop trying
    /// until new data wants a session.
    GiveUp,
    /// Erase every keypair and every handshake secret of the peer: no new session arrived
    /// for `3 * REJECT_AFTER_TIME`, so nothing left can be used and nothing should linger.
    ZeroKeyMaterial,
}

/// The five timers of a peer; the discriminant is the tie-break when deadlines are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    RetransmitHandshake,
    SendKeepalive,
    NewHandshake,
    ZeroKeyMaterial,
    PersistentKeepalive,
}

impl Timer {
    /// Every timer, in wireguard-go's `timersInit` order.
    const ALL: [Timer; 5] = [
        Timer::RetransmitHandshake,
        Timer::SendKeepalive,
        Timer::NewHandshake,
        Timer::ZeroKeyMaterial,
        Timer::PersistentKeepalive,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// The timer state of one peer: armed deadlines, handshake attempts and rate limit.
///
/// Every hook is named after the wireguard-go function (`timersDataSent` → [`data_sent`],
/// ...) that the driver calls at the same point of packet processing. Hooks take `now` even
/// where the current rules ignore it, so that a driver feeds them all alike.
///
/// A new `PeerTimers` is running: hooks arm timers at once. [`stop`] cancels everything and
/// makes the hooks inert until [`start`], as wireguard-go's `timersActive` does while the
/// peer or the interface is down.
///
/// [`data_sent`]: PeerTimers::data_sent
/// [`stop`]: PeerTimers::stop
/// [`start`]: PeerTimers::start
#[derive(Debug, Clone)]
pub struct PeerTimers {
    /// Deadline of each armed timer, indexed by [`Timer::index`]; `None` when disarmed.
    deadlines: [Option<Instant>; 5],
    /// False between [`PeerTimers::stop`] and [`PeerTimers::start`].
    running: bool,
    persistent_keepalive: Option<NonZeroU16>,
    /// Retransmissions since the last non-retry initiation or completed handshake.
    handshake_attempts: u32,
    /// Data arrived while the send-keepalive timer was already armed.
    need_another_keepalive: bool,
    /// The once-per-session initiation near REJECT_AFTER_TIME was already asked for.
    sent_last_minute_handshake: bool,
    /// When the last handshake initiation or response was sent (the rate limit's origin).
    last_handshake_sent: Option<Instant>,
}

impl PeerTimers {
    /// A running peer with nothing armed, keeping a persistent keepalive every
    /// `persistent_keepalive` seconds if set.
    ///
    /// Call [`start`](Self::start) when the interface comes up to send the first persistent
    /// keepalive at once, as wireguard-go does.
    pub fn new(persistent_keepalive: Option<NonZeroU16>) -> Self {
        Self {
            deadlines: [None; 5],
            running: true,
            persistent_keepalive,
            handshake_attempts: 0,
            need_another_keepalive: false,
            sent_last_minute_handshake: false,
            last_handshake_sent: None,
        }
    }

    /// The configured persistent keepalive interval, in seconds.
    pub fn persistent_keepalive(&self) -> Option<NonZeroU16> {
        self.persistent_keepalive
    }

    /// Sets or clears the persistent keepalive interval (UAPI `persistent_keepalive_interval`).
    ///
    /// Turning it on when it was off sends a keepalive right away (the timer fires at `now`),
    /// so that a NAT mapping opens without waiting for traffic. Changing an interval that was
    /// already on waits for the next traversal, as in wireguard-go. Turning it off cancels
    /// the pending keepalive.
    pub fn set_persistent_keepalive(&mut self, interval: Option<NonZeroU16>, now: Instant) {
        let was_off = self.persistent_keepalive.is_none();
        self.persistent_keepalive = interval;
        match interval {
            None => self.disarm(Timer::PersistentKeepalive),
            Some(_) if was_off && self.running => self.arm(Timer::PersistentKeepalive, Some(now)),
            Some(_) => {}
        }
    }

    /// The interface came up, or the peer was added to an interface that is up: hooks act
    /// again, the attempt counter and flags start afresh (wireguard-go `timersStart`), and a
    /// configured persistent keepalive is sent at once (wireguard-go `upLocked`).
    pub fn start(&mut self, now: Instant) {
        self.running = true;
        self.handshake_attempts = 0;
        self.need_another_keepalive = false;
        self.sent_last_minute_handshake = false;
        if self.persistent_keepalive.is_some() {
            self.arm(Timer::PersistentKeepalive, Some(now));
        }
    }

    /// Cancels every timer (peer removed or interface down); hooks are inert until
    /// [`start`](Self::start).
    pub fn stop(&mut self) {
        self.deadlines = [None; 5];
        self.running = false;
    }

    /// An authenticated data packet (not a keepalive) was sent (`timersDataSent`): if no
    /// new-handshake timer is pending, expect to hear back within
    /// `KEEPALIVE_TIMEOUT + REKEY_TIMEOUT` plus jitter, or start a new handshake.
    ///
    /// The jitter follows wireguard-go, which adds `[0, 333] ms` here as the kernel does.
    pub fn data_sent<R: Rng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        if self.running && !self.is_armed(Timer::NewHandshake) {
            let deadline = now.checked_add(NEW_HANDSHAKE_AFTER.saturating_add(jitter(rng)));
            self.arm(Timer::NewHandshake, deadline);
        }
    }

    /// An authenticated data packet (not a keepalive) was received (`timersDataReceived`):
    /// answer with a keepalive after `KEEPALIVE_TIMEOUT` unless something is sent before;
    /// if that keepalive is already pending, remember to send another one after it.
    pub fn data_received(&mut self, now: Instant) {
        if !self.running {
            return;
        }
        if self.is_armed(Timer::SendKeepalive) {
            self.need_another_keepalive = true;
        } else {
            self.arm(Timer::SendKeepalive, now.checked_add(KEEPALIVE_TIMEOUT));
        }
    }

    /// Any authenticated packet (data, keepalive or handshake) was sent
    /// (`timersAnyAuthenticatedPacketSent`): it carries whatever a keepalive would, so the
    /// pending keepalive is cancelled.
    pub fn authenticated_packet_sent(&mut self, _now: Instant) {
        if self.running {
            self.disarm(Timer::SendKeepalive);
        }
    }

    /// Any authenticated packet was received (`timersAnyAuthenticatedPacketReceived`): the
    /// peer is alive, so the new-handshake timer is cancelled.
    pub fn authenticated_packet_received(&mut self, _now: Instant) {
        if self.running {
            self.disarm(Timer::NewHandshake);
        }
    }

    /// Any authenticated packet is about to be sent or was received
    /// (`timersAnyAuthenticatedPacketTraversal`): the persistent keepalive, if configured, is
    /// due one interval after the last traffic in either direction.
    pub fn authenticated_packet_traversal(&mut self, now: Instant) {
        if let Some(interval) = self.persistent_keepalive
            && self.running
        {
            let period = Duration::from_secs(u64::from(interval.get()));
            self.arm(Timer::PersistentKeepalive, now.checked_add(period));
        }
    }

    /// A handshake initiation was sent (`timersHandshakeInitiated`): retransmit it after
    /// `REKEY_TIMEOUT` plus a uniform jitter in `[0, 333] ms` unless a response arrives.
    /// Also the origin of the one-initiation-per-`REKEY_TIMEOUT` rate limit.
    pub fn handshake_initiated<R: Rng + ?Sized>(&mut self, now: Instant, rng: &mut R) {
        self.record_handshake_sent(now);
        if self.running {
            let deadline = now.checked_add(REKEY_TIMEOUT.saturating_add(jitter(rng)));
            self.arm(Timer::RetransmitHandshake, deadline);
        }
    }

    /// A handshake response was sent. wireguard-go counts it for the rate limit
    /// (`lastSentHandshake`), so that a responder does not cross the session it just
    /// answered with an initiation of its own. Report the derived session separately with
    /// [`session_derived`](Self::session_derived).
    pub fn handshake_response_sent(&mut self, now: Instant) {
        self.record_handshake_sent(now);
    }

    /// A handshake response was received and processed, or the first data message confirmed
    /// a session we responded to (`timersHandshakeComplete`): stop retransmitting, and the
    /// next attempt and the next last-minute handshake start afresh.
    pub fn handshake_complete(&mut self, _now: Instant) {
        if self.running {
            self.disarm(Timer::RetransmitHandshake);
        }
        self.handshake_attempts = 0;
        self.sent_last_minute_handshake = false;
    }

    /// A new session's keys were derived, before sending a handshake response or after
    /// receiving one (`timersSessionDerived`): erase all key material of the peer if no newer
    /// session follows within `3 * REJECT_AFTER_TIME`.
    pub fn session_derived(&mut self, now: Instant) {
        if self.running {
            self.arm(
                Timer::ZeroKeyMaterial,
                now.checked_add(ZERO_KEY_MATERIAL_AFTER),
            );
        }
    }

    /// Data wants a session: there is no usable keypair, or the router found the current one
    /// due for rekeying (`REKEY_AFTER_MESSAGES` / `REKEY_AFTER_TIME` as initiator). Returns
    /// whether to send an initiation now, and if so counts it as sent for the rate limit.
    ///
    /// This is wireguard-go's `SendHandshakeInitiation(isRetry = false)`: it resets the
    /// attempt counter even when rate-limited, so steady outbound data keeps a handshake
    /// alive past `REKEY_ATTEMPT_TIME`, and it refuses when a handshake message was sent less
    /// than `REKEY_TIMEOUT` ago. Always `false` while stopped.
    pub fn want_handshake(&mut self, now: Instant) -> bool {
        self.running && self.begin_new_attempt(now)
    }

    /// The interface's identity changed and every session was expired: the next
    /// [`want_handshake`](Self::want_handshake) may initiate at once, as wireguard-go's
    /// `ExpireCurrentKeypairs` backdates its last sent handshake.
    pub fn forget_handshake_rate_limit(&mut self) {
        self.last_handshake_sent = None;
    }

    /// A packet was received on a keypair we initiated that is older than
    /// `REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT` (the router checks the age):
    /// rekey now, before the session expires while the peer, its responder, may not
    /// initiate. As wireguard-go's `keepKeyFreshReceiving`, this asks at most once per
    /// completed handshake; otherwise it behaves as [`want_handshake`](Self::want_handshake).
    pub fn want_last_minute_handshake(&mut self, now: Instant) -> bool {
        if !self.running || self.sent_last_minute_handshake {
            return false;
        }
        self.sent_last_minute_handshake = true;
        self.begin_new_attempt(now)
    }

    /// Fires the earliest expired timer and returns what the driver must do; call again
    /// until it returns `None`. Timers expire when `now >= deadline`, in deadline order,
    /// ties broken in a fixed order (retransmit, send keepalive, new handshake, zero key
    /// material, persistent keepalive). A timer that fires with nothing to do (an initiation
    /// refused by the rate limit, a persistent keepalive that was turned off) is consumed
    /// silently.
    pub fn poll(&mut self, now: Instant) -> Option<TimerAction> {
        while let Some(timer) = self.earliest_expired(now) {
            self.disarm(timer);
            if let Some(action) = self.expire(timer, now) {
                return Some(action);
            }
        }
        None
    }

    /// The earliest armed deadline: the driver sleeps until then and calls
    /// [`poll`](Self::poll). `None` when nothing is armed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Retransmissions of the current handshake attempt.
    pub fn handshake_attempts(&self) -> u32 {
        self.handshake_attempts
    }

    fn expire(&mut self, timer: Timer, now: Instant) -> Option<TimerAction> {
        match timer {
            Timer::RetransmitHandshake => self.expired_retransmit_handshake(now),
            Timer::SendKeepalive => {
                if self.need_another_keepalive {
                    self.need_another_keepalive = false;
                    self.arm(Timer::SendKeepalive, now.checked_add(KEEPALIVE_TIMEOUT));
                }
                Some(TimerAction::SendKeepalive)
            }
            // wireguard-go: "Retrying handshake because we stopped hearing back".
            Timer::NewHandshake => self
                .begin_new_attempt(now)
                .then_some(TimerAction::SendInitiation { retry: false }),
            Timer::ZeroKeyMaterial => Some(TimerAction::ZeroKeyMaterial),
            Timer::PersistentKeepalive => self
                .persistent_keepalive
                .map(|_| TimerAction::SendKeepalive),
        }
    }

    fn expired_retransmit_handshake(&mut self, now: Instant) -> Option<TimerAction> {
        // The counter is compared before it is incremented, exactly as in wireguard-go and
        // the kernel: MAX_TIMER_HANDSHAKES + 1 retransmissions follow the first initiation,
        // so the attempt is abandoned about (MAX_TIMER_HANDSHAKES + 2) * REKEY_TIMEOUT, just
        // past REKEY_ATTEMPT_TIME, after it began.
        if self.handshake_attempts > MAX_TIMER_HANDSHAKES {
            // Staged packets are dropped by the driver; a keepalive would only be skipped.
            self.disarm(Timer::SendKeepalive);
            // Destroy whatever a partial exchange left behind, unless already scheduled.
            if !self.is_armed(Timer::ZeroKeyMaterial) {
                self.arm(
                    Timer::ZeroKeyMaterial,
                    now.checked_add(ZERO_KEY_MATERIAL_AFTER),
                );
            }
            return Some(TimerAction::GiveUp);
        }
        self.handshake_attempts = self.handshake_attempts.saturating_add(1);
        if self.rate_limited(now) {
            // A response we sent since counts as a handshake message; like wireguard-go,
            // skip this retransmission and leave the timer unarmed.
            return None;
        }
        self.record_handshake_sent(now);
        Some(TimerAction::SendInitiation { retry: true })
    }

    /// wireguard-go `SendHandshakeInitiation(false)`: a new attempt resets the counter, then
    /// the rate limit decides whether an initiation leaves now.
    fn begin_new_attempt(&mut self, now: Instant) -> bool {
        self.handshake_attempts = 0;
        if self.rate_limited(now) {
            return false;
        }
        self.record_handshake_sent(now);
        true
    }

    fn rate_limited(&self, now: Instant) -> bool {
        self.last_handshake_sent
            .is_some_and(|last| now.saturating_duration_since(last) < REKEY_TIMEOUT)
    }

    /// The decision to send and the report that it was sent may come at different times
    /// (keyd builds the message); the rate limit counts from the later one.
    fn record_handshake_sent(&mut self, now: Instant) {
        self.last_handshake_sent = Some(self.last_handshake_sent.map_or(now, |last| last.max(now)));
    }

    fn earliest_expired(&self, now: Instant) -> Option<Timer> {
        Timer::ALL
            .into_iter()
            .filter_map(|timer| {
                self.deadlines[timer.index()]
                    .filter(|&deadline| deadline <= now)
                    .map(|deadline| (deadline, timer.index(), timer))
            })
            .min_by_key(|&(deadline, index, _)| (deadline, index))
            .map(|(_, _, timer)| timer)
    }

    fn is_armed(&self, timer: Timer) -> bool {
        self.deadlines[timer.index()].is_some()
    }

    /// Arms (or re-arms) `timer`. A deadline that overflowed `Instant` is `None`: such a
    /// timer can never fire, and leaving it disarmed says so.
    fn arm(&mut self, timer: Timer, deadline: Option<Instant>) {
        self.deadlines[timer.index()] = deadline;
    }

    fn disarm(&mut self, timer: Timer) {
        self.deadlines[timer.index()] = None;
    }
}

/// A uniform jitter in `[0, REKEY_TIMEOUT_JITTER_MAX]` at millisecond granularity, as
/// wireguard-go draws it (`fastrandn(334)` milliseconds).
fn jitter<R: Rng + ?Sized>(rng: &mut R) -> Duration {
    const STEPS: u64 = REKEY_TIMEOUT_JITTER_MAX.as_millis() as u64 + 1;
    // Multiply-shift maps a 32-bit draw onto 0..STEPS without a rejection loop; its bias
    // (under 1e-7 relative per value) is far below anything a retry schedule can show.
    let millis = (u64::from(rng.next_u32()) * STEPS) >> 32;
    Duration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RNG that returns a fixed word, to pin the jitter's end points.
    struct Fixed(u32);

    impl rand_core::TryRng for Fixed {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(self.0)
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(u64::from(self.0))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            dst.fill(0);
            Ok(())
        }
    }

    #[test]
    fn jitter_spans_zero_to_333_ms_inclusive() {
        assert_eq!(jitter(&mut Fixed(0)), Duration::ZERO);
        assert_eq!(jitter(&mut Fixed(u32::MAX)), REKEY_TIMEOUT_JITTER_MAX);
        assert_eq!(jitter(&mut Fixed(1 << 31)), Duration::from_millis(167));
    }

    #[test]
    fn deadline_ties_break_in_timer_order() {
        let t0 = Instant::now();
        let mut timers = PeerTimers::new(NonZeroU16::new(10));
        timers.authenticated_packet_traversal(t0); // persistent keepalive at t0 + 10 s
        timers.data_received(t0); // send keepalive at t0 + 10 s
        assert_eq!(
            timers.earliest_expired(t0 + KEEPALIVE_TIMEOUT),
            Some(Timer::SendKeepalive)
        );
    }
}
