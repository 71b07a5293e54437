//! One test per timer rule of the whitepaper's section 6 (as wireguard-go implements it),
//! each on a virtual clock stepped in small increments with a seeded RNG.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use rand::{SeedableRng, rngs::StdRng};
use wg_timers::{
    KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, PeerTimers, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX, TimerAction,
};

const RETRY: TimerAction = TimerAction::SendInitiation { retry: true };
const NEW_ATTEMPT: TimerAction = TimerAction::SendInitiation { retry: false };
const KEEPALIVE: TimerAction = TimerAction::SendKeepalive;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// What the simulated driver does with an action it was handed.
type Reaction = fn(&mut PeerTimers, TimerAction, Instant, &mut StdRng);

/// A driver that sends whatever it is told to and reports the packet, as datad does.
fn sends_everything(timers: &mut PeerTimers, action: TimerAction, now: Instant, rng: &mut StdRng) {
    match action {
        TimerAction::SendInitiation { .. } => {
            timers.authenticated_packet_traversal(now);
            timers.authenticated_packet_sent(now);
            timers.handshake_initiated(now, rng);
        }
        TimerAction::SendKeepalive => {
            timers.authenticated_packet_traversal(now);
            timers.authenticated_packet_sent(now);
        }
        TimerAction::GiveUp | TimerAction::ZeroKeyMaterial => {}
    }
}

/// A driver that sends nothing, as when staged packets hold keepalives back.
fn sends_nothing(_: &mut PeerTimers, _: TimerAction, _: Instant, _: &mut StdRng) {}

/// One peer's timers on a virtual clock that starts at `t0`.
struct Sim {
    t0: Instant,
    elapsed: Duration,
    timers: PeerTimers,
    rng: StdRng,
    react: Reaction,
}

impl Sim {
    fn new(persistent_keepalive: Option<u16>, react: Reaction) -> Self {
        Self {
            t0: Instant::now(),
            elapsed: Duration::ZERO,
            timers: PeerTimers::new(persistent_keepalive.and_then(NonZeroU16::new)),
            rng: StdRng::seed_from_u64(0x5eed_7133),
            react,
        }
    }

    fn now(&self) -> Instant {
        self.t0 + self.elapsed
    }

    /// Steps the clock by `step` up to `horizon` (measured from `t0`), draining `poll` at
    /// the current time and after every step, handing each action to the driver; returns
    /// every action with the time it fired, as an offset from `t0`.
    fn run_until(&mut self, horizon: Duration, step: Duration) -> Vec<(Duration, TimerAction)> {
        let mut fired = Vec::new();
        loop {
            let now = self.now();
            let mut at_this_instant = 0;
            while let Some(action) = self.timers.poll(now) {
                at_this_instant += 1;
                assert!(
                    at_this_instant < 10,
                    "poll keeps firing at {:?}",
                    self.elapsed
                );
                fired.push((self.elapsed, action));
                (self.react)(&mut self.timers, action, now, &mut self.rng);
            }
            if self.elapsed >= horizon {
                return fired;
            }
            self.elapsed = (self.elapsed + step).min(horizon);
        }
    }

    /// Data wants a session now; if allowed, the driver sends the initiation.
    fn data_wants_session(&mut self) -> bool {
        let now = self.now();
        let allowed = self.timers.want_handshake(now);
        if allowed {
            sends_everything(&mut self.timers, NEW_ATTEMPT, now, &mut self.rng);
        }
        allowed
    }
}

fn times_of(fired: &[(Duration, TimerAction)], wanted: TimerAction) -> Vec<Duration> {
    fired
        .iter()
        .filter(|(_, action)| *action == wanted)
        .map(|(at, _)| *at)
        .collect()
}

fn assert_within(at: Duration, low: Duration, high: Duration) {
    assert!(low <= at && at <= high, "{at:?} not in [{low:?}, {high:?}]");
}

#[test]
fn constants_match_the_whitepaper() {
    assert_eq!(REKEY_AFTER_MESSAGES, 1 << 60);
    assert_eq!(
        u128::from(REJECT_AFTER_MESSAGES),
        (1u128 << 64) - (1 << 13) - 1
    );
    assert_eq!(REKEY_AFTER_TIME, secs(120));
    assert_eq!(REJECT_AFTER_TIME, secs(180));
    assert_eq!(REKEY_ATTEMPT_TIME, secs(90));
    assert_eq!(REKEY_TIMEOUT, secs(5));
    assert_eq!(REKEY_TIMEOUT_JITTER_MAX, ms(333));
    assert_eq!(KEEPALIVE_TIMEOUT, secs(10));
    assert_eq!(MAX_TIMER_HANDSHAKES, 18);
}

#[test]
fn rekey_timeout_retries_every_5_seconds_with_jitter() {
    let mut sim = Sim::new(None, sends_everything);
    assert!(sim.data_wants_session());
    // Nine retries always fit in 9 * 5.333 s = 48 s, and a tenth never does (>= 50 s).
    let fired = sim.run_until(secs(48), ms(1));
    assert!(
        fired.iter().all(|(_, action)| *action == RETRY),
        "{fired:?}"
    );
    assert_eq!(fired.len(), 9);

    let mut sent = vec![Duration::ZERO];
    sent.extend(times_of(&fired, RETRY));
    let gaps: Vec<Duration> = sent.windows(2).map(|w| w[1] - w[0]).collect();
    for &gap in &gaps {
        assert_within(gap, REKEY_TIMEOUT, REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    }
    let mut distinct = gaps.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 5, "jitter does not vary: {gaps:?}");
    assert_eq!(sim.timers.handshake_attempts(), 9);
}

#[test]
fn retransmission_jitter_is_uniform_over_0_to_333_ms() {
    let mut rng = StdRng::seed_from_u64(7);
    let t0 = Instant::now();
    let mut counts = [0u32; 334];
    for _ in 0..20_000 {
        let mut timers = PeerTimers::new(None);
        timers.handshake_initiated(t0, &mut rng);
        let jitter = timers.next_deadline().unwrap() - t0 - REKEY_TIMEOUT;
        assert!(jitter <= REKEY_TIMEOUT_JITTER_MAX, "{jitter:?}");
        assert_eq!(
            jitter.subsec_nanos() % 1_000_000,
            0,
            "not whole milliseconds"
        );
        counts[jitter.as_millis() as usize] += 1;
    }
    // 20 000 draws over 334 values: about 60 each; every value, both ends included, shows
    // up, and none is wildly over- or under-drawn (> 6 standard deviations).
    assert!(
        counts.iter().all(|&n| (20..=110).contains(&n)),
        "{counts:?}"
    );
}

#[test]
fn handshake_abandoned_after_rekey_attempt_time() {
    let mut sim = Sim::new(None, sends_everything);
    assert!(sim.data_wants_session());
    let fired = sim.run_until(secs(200), ms(1));

    let retries = times_of(&fired, RETRY);
    let give_ups = times_of(&fired, TimerAction::GiveUp);
    // As in wireguard-go and the kernel: the first initiation, then MAX_TIMER_HANDSHAKES + 1
    // retransmissions ("did not complete after 20 attempts, giving up").
    assert_eq!(retries.len() as u32, MAX_TIMER_HANDSHAKES + 1);
    assert_eq!(give_ups.len(), 1, "{fired:?}");
    assert_eq!(fired.len(), retries.len() + 1, "{fired:?}");
    assert_eq!(
        fired.last().map(|(_, action)| *action),
        Some(TimerAction::GiveUp)
    );

    // Still retrying when REKEY_ATTEMPT_TIME runs out, abandoned within the next
    // couple of REKEY_TIMEOUTs: 20 timeouts of 5 s + at most 333 ms after the first send.
    let give_up = give_ups[0];
    let last_retry = *retries.last().unwrap();
    assert!(last_retry >= REKEY_ATTEMPT_TIME, "{last_retry:?}");
    assert!(give_up > REKEY_ATTEMPT_TIME);
    let timeouts = MAX_TIMER_HANDSHAKES + 2;
    assert_within(
        give_up,
        REKEY_TIMEOUT * timeouts,
        (REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX) * timeouts,
    );
    assert_within(
        give_up - last_retry,
        REKEY_TIMEOUT,
        REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX,
    );
    // Nothing retransmits after giving up; only the key-zeroing timer is left.
    assert_eq!(
        sim.timers.next_deadline(),
        Some(sim.t0 + give_up + REJECT_AFTER_TIME * 3)
    );
}

#[test]
fn want_handshake_resets_the_attempt_counter() {
    let mut sim = Sim::new(None, sends_everything);
    assert!(sim.data_wants_session());
    let early = sim.run_until(secs(27), ms(1));
    assert_eq!(times_of(&early, RETRY).len(), 5);
    assert_eq!(sim.timers.handshake_attempts(), 5);

    // More data: refused by the rate limit (the 5th retry left < 5 s ago), yet the attempt
    // starts over, so the retransmissions run a full MAX_TIMER_HANDSHAKES + 1 from here.
    assert!(!sim.data_wants_session());
    assert_eq!(sim.timers.handshake_attempts(), 0);
    let late = sim.run_until(secs(300), ms(1));
    assert_eq!(
        times_of(&late, RETRY).len() as u32,
        MAX_TIMER_HANDSHAKES + 1
    );
    assert_eq!(times_of(&late, TimerAction::GiveUp).len(), 1);
}

#[test]
fn new_data_after_give_up_starts_a_fresh_attempt() {
    let mut sim = Sim::new(None, sends_everything);
    assert!(sim.data_wants_session());
    let first = sim.run_until(secs(110), ms(1));
    assert_eq!(times_of(&first, TimerAction::GiveUp).len(), 1);

    assert!(sim.data_wants_session());
    assert_eq!(sim.timers.handshake_attempts(), 0);
    let second = sim.run_until(secs(230), ms(1));
    assert_eq!(
        times_of(&second, RETRY).len() as u32,
        MAX_TIMER_HANDSHAKES + 1
    );
    let give_up = times_of(&second, TimerAction::GiveUp);
    assert_eq!(give_up.len(), 1);
    assert_within(give_up[0], secs(210), secs(110) + ms(5333) * 20);
}

#[test]
fn handshake_complete_stops_retransmission() {
    let mut sim = Sim::new(None, sends_everything);
    assert!(sim.data_wants_session());
    let before = sim.run_until(secs(7), ms(1));
    assert_eq!(times_of(&before, RETRY).len(), 1);

    let now = sim.now();
    sim.timers.handshake_complete(now);
    assert_eq!(sim.timers.handshake_attempts(), 0);
    assert_eq!(sim.timers.next_deadline(), None);
    assert_eq!(sim.run_until(secs(200), ms(1)), []);
}

#[test]
fn retransmission_skipped_when_a_response_left_meanwhile() {
    let mut sim = Sim::new(None, sends_everything);
    assert!(sim.data_wants_session());
    sim.run_until(secs(3), ms(1));
    // The peer initiated too and we answered: that response counts for the rate limit, so
    // the retransmission due at ~5 s is dropped, as wireguard-go's rate check drops it.
    let now = sim.now();
    sim.timers.handshake_response_sent(now);
    sim.timers.session_derived(now);
    let fired = sim.run_until(secs(100), ms(1));
    assert_eq!(fired, []);
    assert_eq!(sim.timers.handshake_attempts(), 1);
    assert_eq!(
        sim.timers.next_deadline(),
        Some(sim.t0 + secs(3) + REJECT_AFTER_TIME * 3)
    );
}

#[test]
fn keepalive_sent_after_keepalive_timeout_of_received_data() {
    let mut sim = Sim::new(None, sends_everything);
    let now = sim.now();
    sim.timers.data_received(now);
    let fired = sim.run_until(secs(60), ms(1));
    assert_eq!(fired, [(KEEPALIVE_TIMEOUT, KEEPALIVE)]);
}

#[test]
fn data_received_while_keepalive_pending_asks_for_another() {
    // The driver cannot send (data is staged), so nothing cancels the keepalive timer.
    let mut sim = Sim::new(None, sends_nothing);
    let now = sim.now();
    sim.timers.data_received(now);
    sim.run_until(secs(3), ms(1));
    let now = sim.now();
    sim.timers.data_received(now);
    let fired = sim.run_until(secs(60), ms(1));
    assert_eq!(fired, [(secs(10), KEEPALIVE), (secs(20), KEEPALIVE)]);
}

#[test]
fn authenticated_packet_sent_cancels_pending_keepalive() {
    let mut sim = Sim::new(None, sends_everything);
    let now = sim.now();
    sim.timers.data_received(now);
    sim.run_until(secs(5), ms(1));
    let now = sim.now();
    sim.timers.authenticated_packet_sent(now);
    assert_eq!(sim.timers.next_deadline(), None);
    assert_eq!(sim.run_until(secs(60), ms(1)), []);
}

#[test]
fn new_handshake_after_15_s_of_unanswered_data() {
    let mut sim = Sim::new(None, sends_everything);
    let now = sim.now();
    let rng = &mut sim.rng;
    sim.timers.data_sent(now, rng);
    // Horizon below 15 s + 5 s, the earliest retransmission of that initiation.
    let fired = sim.run_until(secs(19), ms(1));
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].1, NEW_ATTEMPT);
    assert_within(
        fired[0].0,
        KEEPALIVE_TIMEOUT + REKEY_TIMEOUT,
        KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX,
    );
    assert_eq!(sim.timers.handshake_attempts(), 0);
}

#[test]
fn new_handshake_deadline_is_jittered_like_retransmission() {
    // wireguard-go and the kernel add the same [0, 333] ms jitter to this timer.
    let mut rng = StdRng::seed_from_u64(11);
    let t0 = Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..5_000 {
        let mut timers = PeerTimers::new(None);
        timers.data_sent(t0, &mut rng);
        let jitter = timers.next_deadline().unwrap() - t0 - (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT);
        assert!(jitter <= REKEY_TIMEOUT_JITTER_MAX, "{jitter:?}");
        seen.insert(jitter);
    }
    // 5 000 draws over 334 values miss one with probability about 334 * e^-15.
    assert_eq!(seen.len(), 334, "only {} distinct jitters", seen.len());
    assert_eq!(seen.first(), Some(&Duration::ZERO));
    assert_eq!(seen.last(), Some(&REKEY_TIMEOUT_JITTER_MAX));
}

#[test]
fn data_sent_keeps_the_first_new_handshake_deadline() {
    let mut sim = Sim::new(None, sends_everything);
    let now = sim.now();
    sim.timers.data_sent(now, &mut sim.rng);
    let first_deadline = sim.timers.next_deadline();
    sim.run_until(secs(10), ms(1));
    let now = sim.now();
    sim.timers.data_sent(now, &mut sim.rng);
    assert_eq!(sim.timers.next_deadline(), first_deadline);
    let fired = sim.run_until(secs(19), ms(1));
    assert_eq!(times_of(&fired, NEW_ATTEMPT).len(), 1);
    assert!(fired[0].0 < secs(16), "{fired:?}");
}

#[test]
fn authenticated_packet_received_cancels_new_handshake() {
    let mut sim = Sim::new(None, sends_everything);
    let now = sim.now();
    sim.timers.data_sent(now, &mut sim.rng);
    sim.run_until(secs(14), ms(1));
    let now = sim.now();
    sim.timers.authenticated_packet_received(now);
    assert_eq!(sim.timers.next_deadline(), None);
    assert_eq!(sim.run_until(secs(60), ms(1)), []);
}

#[test]
fn new_handshake_respects_the_initiation_rate_limit() {
    let mut sim = Sim::new(None, sends_everything);
    let now = sim.now();
    sim.timers.data_sent(now, &mut sim.rng);
    sim.run_until(secs(12), ms(1));
    assert!(sim.data_wants_session());
    // The new-handshake timer expires at ~15 s, 3 s after that initiation: consumed
    // silently. The next initiation is the retransmission, 5 s + jitter after 12 s.
    let fired = sim.run_until(secs(30), ms(1));
    assert_eq!(times_of(&fired, NEW_ATTEMPT), []);
    let retries = times_of(&fired, RETRY);
    assert!(!retries.is_empty());
    assert_within(retries[0], secs(17), secs(17) + REKEY_TIMEOUT_JITTER_MAX);
}

#[test]
fn initiations_rate_limited_to_one_per_rekey_timeout() {
    let t0 = Instant::now();
    let mut timers = PeerTimers::new(None);
    assert!(timers.want_handshake(t0));
    for offset in [ms(1), secs(1), ms(4_999)] {
        assert!(!timers.want_handshake(t0 + offset), "allowed at {offset:?}");
    }
    assert!(timers.want_handshake(t0 + REKEY_TIMEOUT));
    assert!(!timers.want_handshake(t0 + ms(9_999)));
    assert!(timers.want_handshake(t0 + secs(10)));
    // Deciding to send arms nothing: the retransmit timer waits for handshake_initiated.
    assert_eq!(timers.next_deadline(), None);
}

#[test]
fn a_new_identity_may_initiate_at_once() {
    let t0 = Instant::now();
    let mut timers = PeerTimers::new(None);
    assert!(timers.want_handshake(t0));
    assert!(!timers.want_handshake(t0 + secs(1)));
    // The private key changed and every session was expired (wireguard-go backdates its
    // last sent handshake): waiting out REKEY_TIMEOUT would leave the tunnel down.
    timers.forget_handshake_rate_limit();
    assert!(timers.want_handshake(t0 + secs(1)));
    assert!(!timers.want_handshake(t0 + secs(2)));
}

#[test]
fn handshake_response_counts_for_the_initiation_rate_limit() {
    let t0 = Instant::now();
    let mut timers = PeerTimers::new(None);
    timers.handshake_response_sent(t0);
    assert!(!timers.want_handshake(t0 + ms(4_999)));
    assert!(timers.want_handshake(t0 + REKEY_TIMEOUT));
}

#[test]
fn last_minute_handshake_asked_once_per_session() {
    let t0 = Instant::now();
    let mut timers = PeerTimers::new(None);
    assert!(timers.want_last_minute_handshake(t0));
    assert!(!timers.want_last_minute_handshake(t0 + secs(6)));
    assert!(!timers.want_last_minute_handshake(t0 + secs(60)));
    timers.handshake_complete(t0 + secs(61));
    assert!(timers.want_last_minute_handshake(t0 + secs(62)));
}

#[test]
fn key_material_zeroed_after_three_reject_after_times() {
    let mut sim = Sim::new(None, sends_everything);
    let now = sim.now();
    sim.timers.session_derived(now);
    let fired = sim.run_until(secs(1_200), ms(10));
    assert_eq!(fired, [(secs(540), TimerAction::ZeroKeyMaterial)]);
}

#[test]
fn new_session_postpones_key_zeroing() {
    let mut sim = Sim::new(None, sends_everything);
    let now = sim.now();
    sim.timers.session_derived(now);
    sim.run_until(secs(100), ms(10));
    let now = sim.now();
    sim.timers.session_derived(now);
    let fired = sim.run_until(secs(1_200), ms(10));
    assert_eq!(fired, [(secs(640), TimerAction::ZeroKeyMaterial)]);
}

#[test]
fn give_up_schedules_key_zeroing_when_none_is_pending() {
    let mut sim = Sim::new(None, sends_everything);
    assert!(sim.data_wants_session());
    let fired = sim.run_until(secs(1_000), ms(1));
    let give_up = times_of(&fired, TimerAction::GiveUp);
    assert_eq!(give_up.len(), 1);
    assert_eq!(
        times_of(&fired, TimerAction::ZeroKeyMaterial),
        [give_up[0] + REJECT_AFTER_TIME * 3]
    );
}

#[test]
fn give_up_keeps_an_earlier_key_zeroing_deadline() {
    let mut sim = Sim::new(None, sends_everything);
    let now = sim.now();
    sim.timers.session_derived(now);
    sim.run_until(secs(1), ms(1));
    assert!(sim.data_wants_session());
    let fired = sim.run_until(secs(1_000), ms(1));
    assert_eq!(times_of(&fired, TimerAction::GiveUp).len(), 1);
    assert_eq!(times_of(&fired, TimerAction::ZeroKeyMaterial), [secs(540)]);
}

#[test]
fn give_up_cancels_a_pending_keepalive() {
    let mut sim = Sim::new(None, sends_everything);
    assert!(sim.data_wants_session());
    // Step to the last retransmission, the one that takes the counter past the maximum.
    while sim.timers.handshake_attempts() <= MAX_TIMER_HANDSHAKES {
        assert!(
            sim.elapsed < secs(200),
            "never retransmitted past the maximum"
        );
        let next = sim.elapsed + ms(1);
        sim.run_until(next, ms(1));
    }
    // Data arrives on an old session between the last retransmission and giving up: the
    // keepalive that would answer it (due after the give-up) is dropped with the staged
    // packets.
    let received_at = sim.elapsed;
    let now = sim.now();
    sim.timers.data_received(now);
    let fired = sim.run_until(secs(200), ms(1));
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].1, TimerAction::GiveUp);
    assert!(fired[0].0 - received_at < KEEPALIVE_TIMEOUT);
}

#[test]
fn persistent_keepalive_fires_at_interval() {
    let mut sim = Sim::new(Some(25), sends_everything);
    let now = sim.now();
    sim.timers.authenticated_packet_traversal(now);
    let fired = sim.run_until(secs(99), ms(1));
    assert_eq!(
        fired,
        [
            (secs(25), KEEPALIVE),
            (secs(50), KEEPALIVE),
            (secs(75), KEEPALIVE)
        ]
    );
}

#[test]
fn persistent_keepalive_counts_from_the_last_traversal() {
    let mut sim = Sim::new(Some(25), sends_everything);
    let now = sim.now();
    sim.timers.authenticated_packet_traversal(now);
    sim.run_until(secs(20), ms(1));
    let now = sim.now();
    sim.timers.authenticated_packet_traversal(now);
    let fired = sim.run_until(secs(99), ms(1));
    assert_eq!(
        fired,
        [
            (secs(45), KEEPALIVE),
            (secs(70), KEEPALIVE),
            (secs(95), KEEPALIVE)
        ]
    );
}

#[test]
fn turning_persistent_keepalive_on_sends_one_at_once() {
    let mut sim = Sim::new(None, sends_everything);
    sim.run_until(secs(3), ms(1));
    let now = sim.now();
    sim.timers
        .set_persistent_keepalive(NonZeroU16::new(25), now);
    let fired = sim.run_until(secs(60), ms(1));
    assert_eq!(
        fired,
        [
            (secs(3), KEEPALIVE),
            (secs(28), KEEPALIVE),
            (secs(53), KEEPALIVE)
        ]
    );
}

#[test]
fn changing_an_enabled_persistent_keepalive_waits_for_traffic() {
    let mut sim = Sim::new(Some(25), sends_everything);
    let now = sim.now();
    sim.timers.authenticated_packet_traversal(now);
    sim.run_until(secs(3), ms(1));
    let now = sim.now();
    sim.timers
        .set_persistent_keepalive(NonZeroU16::new(10), now);
    let fired = sim.run_until(secs(50), ms(1));
    assert_eq!(
        fired,
        [
            (secs(25), KEEPALIVE),
            (secs(35), KEEPALIVE),
            (secs(45), KEEPALIVE)
        ]
    );
}

#[test]
fn turning_persistent_keepalive_off_cancels_it() {
    let mut sim = Sim::new(Some(25), sends_everything);
    let now = sim.now();
    sim.timers.authenticated_packet_traversal(now);
    sim.run_until(secs(10), ms(1));
    let now = sim.now();
    sim.timers.set_persistent_keepalive(None, now);
    assert_eq!(sim.timers.persistent_keepalive(), None);
    assert_eq!(sim.timers.next_deadline(), None);
    assert_eq!(sim.run_until(secs(100), ms(1)), []);
}

#[test]
fn start_sends_the_persistent_keepalive_at_once() {
    let mut sim = Sim::new(Some(25), sends_everything);
    let now = sim.now();
    sim.timers.start(now);
    let fired = sim.run_until(secs(30), ms(1));
    assert_eq!(fired, [(secs(0), KEEPALIVE), (secs(25), KEEPALIVE)]);
}

#[test]
fn stop_cancels_every_timer_and_mutes_hooks_until_start() {
    let mut sim = Sim::new(Some(25), sends_everything);
    let now = sim.now();
    let rng = &mut sim.rng;
    sim.timers.authenticated_packet_traversal(now);
    sim.timers.data_received(now);
    sim.timers.data_sent(now, rng);
    sim.timers.session_derived(now);
    sim.timers.handshake_initiated(now, rng);
    sim.timers.stop();
    assert_eq!(sim.timers.next_deadline(), None);

    sim.timers.data_received(now);
    sim.timers.data_sent(now, &mut sim.rng);
    sim.timers.session_derived(now);
    sim.timers.authenticated_packet_traversal(now);
    assert!(!sim.timers.want_handshake(now + secs(10)));
    assert!(!sim.timers.want_last_minute_handshake(now + secs(10)));
    assert_eq!(sim.timers.next_deadline(), None);
    assert_eq!(sim.run_until(secs(1_000), ms(10)), []);

    let now = sim.now();
    sim.timers.start(now);
    assert_eq!(sim.timers.next_deadline(), Some(now));
    assert_eq!(sim.timers.poll(now), Some(KEEPALIVE));
    sim.timers.data_received(now);
    assert_eq!(sim.timers.next_deadline(), Some(now + KEEPALIVE_TIMEOUT));
}

#[test]
fn simultaneous_expiries_fire_in_deadline_order() {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(3);
    let mut timers = PeerTimers::new(None);
    timers.session_derived(t0); // 540 s
    timers.data_sent(t0, &mut rng); // 15 s + jitter
    timers.data_received(t0); // 10 s
    timers.set_persistent_keepalive(NonZeroU16::new(7), t0); // at once
    timers.handshake_initiated(t0 + secs(20), &mut rng); // 25 s + jitter

    // A driver that overslept (a suspended laptop): everything fires at one late poll,
    // earliest deadline first. The retransmission comes right after the new-handshake
    // initiation, at the same instant, so the rate limit swallows it.
    let late = t0 + secs(1_000);
    let fired: Vec<TimerAction> = std::iter::from_fn(|| timers.poll(late)).collect();
    assert_eq!(
        fired,
        [
            KEEPALIVE,
            KEEPALIVE,
            NEW_ATTEMPT,
            TimerAction::ZeroKeyMaterial
        ]
    );
    assert_eq!(timers.handshake_attempts(), 1);
    assert_eq!(timers.next_deadline(), None);
}

#[test]
fn poll_before_the_deadline_returns_nothing() {
    let t0 = Instant::now();
    let mut timers = PeerTimers::new(None);
    timers.data_received(t0);
    let deadline = timers.next_deadline().unwrap();
    assert_eq!(deadline, t0 + KEEPALIVE_TIMEOUT);
    assert_eq!(timers.poll(deadline - Duration::from_nanos(1)), None);
    assert_eq!(timers.next_deadline(), Some(deadline));
    assert_eq!(timers.poll(deadline), Some(KEEPALIVE));
    assert_eq!(timers.poll(deadline), None);
}
