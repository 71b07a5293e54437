//! Random event sequences against invariants that hold whatever the driver does: nothing
//! fires early, the reported deadline is never in the past, initiations respect the rate
//! limit, and an attempt retransmits at most `MAX_TIMER_HANDSHAKES + 1` times.
//!
//! The lower bound for each action comes from an independent record of the events fed in,
//! not from the state machine's own deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::{SeedableRng, rngs::StdRng};
use wg_timers::{
    KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, PeerTimers, REJECT_AFTER_TIME, REKEY_TIMEOUT,
    TimerAction,
};

#[derive(Debug, Clone)]
enum Event {
    Advance(Duration),
    /// A long stretch with no events, polled every 500 ms: timers run their course.
    Quiet(Duration),
    DataSent,
    DataReceived,
    AuthenticatedPacketSent,
    AuthenticatedPacketReceived,
    AuthenticatedPacketTraversal,
    HandshakeInitiated,
    HandshakeResponseSent,
    HandshakeComplete,
    SessionDerived,
    WantHandshake,
    WantLastMinuteHandshake,
    SetPersistentKeepalive(Option<NonZeroU16>),
    Stop,
    Start,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (0u64..2_000).prop_map(|ms| Event::Advance(Duration::from_millis(ms))),
        6 => (0u64..30_000).prop_map(|ms| Event::Advance(Duration::from_millis(ms))),
        1 => (0u64..700_000).prop_map(|ms| Event::Advance(Duration::from_millis(ms))),
        2 => (0u64..200).prop_map(|secs| Event::Quiet(Duration::from_secs(secs))),
        2 => Just(Event::DataSent),
        2 => Just(Event::DataReceived),
        1 => Just(Event::AuthenticatedPacketSent),
        1 => Just(Event::AuthenticatedPacketReceived),
        1 => Just(Event::AuthenticatedPacketTraversal),
        1 => Just(Event::HandshakeInitiated),
        1 => Just(Event::HandshakeResponseSent),
        1 => Just(Event::HandshakeComplete),
        1 => Just(Event::SessionDerived),
        3 => Just(Event::WantHandshake),
        1 => Just(Event::WantLastMinuteHandshake),
        1 => proptest::option::of(1u16..=60)
            .prop_map(|secs| Event::SetPersistentKeepalive(secs.and_then(NonZeroU16::new))),
        1 => Just(Event::Stop),
        1 => Just(Event::Start),
    ]
}

/// What the events fed in so far allow, kept apart from the state machine under test.
struct History {
    running: bool,
    persistent_keepalive: Option<NonZeroU16>,
    /// Most recent `handshake_initiated` since the last stop: the retransmit origin.
    last_initiated: Option<Instant>,
    /// Most recent handshake message sent or decided (the rate limit's origin).
    last_handshake_message: Option<Instant>,
    /// Earliest time a keepalive may fire, over every event since the last stop.
    earliest_keepalive: Option<Instant>,
    /// Earliest `data_sent` since the last stop.
    first_data_sent: Option<Instant>,
    /// Earliest session derivation or give-up since the last stop.
    first_zeroing_origin: Option<Instant>,
    sent_last_minute_handshake: bool,
    retries_since_reset: u32,
    gave_up_since_reset: bool,
    last_drain: Option<Instant>,
}

fn earliest(slot: &mut Option<Instant>, candidate: Option<Instant>) {
    if let Some(candidate) = candidate {
        *slot = Some(slot.map_or(candidate, |current| current.min(candidate)));
    }
}

struct Harness {
    now: Instant,
    timers: PeerTimers,
    rng: StdRng,
    /// Whether the driver sends what it is told (and reports it) or holds everything back.
    driver_sends: bool,
    history: History,
}

impl Harness {
    fn new(persistent_keepalive: Option<NonZeroU16>, driver_sends: bool, seed: u64) -> Self {
        Self {
            now: Instant::now(),
            timers: PeerTimers::new(persistent_keepalive),
            rng: StdRng::seed_from_u64(seed),
            driver_sends,
            history: History {
                running: true,
                persistent_keepalive,
                last_initiated: None,
                last_handshake_message: None,
                earliest_keepalive: None,
                first_data_sent: None,
                first_zeroing_origin: None,
                sent_last_minute_handshake: false,
                retries_since_reset: 0,
                gave_up_since_reset: false,
                last_drain: None,
            },
        }
    }

    fn reset_attempt(&mut self) {
        self.history.retries_since_reset = 0;
        self.history.gave_up_since_reset = false;
    }

    /// An initiation decision at `now` must keep the one-per-REKEY_TIMEOUT rate limit.
    fn check_initiation_allowed(&mut self) {
        let now = self.now;
        if let Some(last) = self.history.last_handshake_message {
            assert!(
                now.duration_since(last) >= REKEY_TIMEOUT,
                "initiation {:?} after the previous handshake message",
                now.duration_since(last)
            );
        }
        self.history.last_handshake_message = Some(now);
    }

    fn apply(&mut self, event: &Event) {
        let now = self.now;
        let h = &mut self.history;
        match *event {
            Event::Advance(by) => self.now += by,
            Event::Quiet(total) => {
                let step = Duration::from_millis(500);
                let end = now + total;
                while self.now < end {
                    self.now = (self.now + step).min(end);
                    self.drain();
                }
            }
            Event::DataSent => {
                self.timers.data_sent(now, &mut self.rng);
                if h.running {
                    earliest(&mut h.first_data_sent, Some(now));
                }
            }
            Event::DataReceived => {
                self.timers.data_received(now);
                if h.running {
                    earliest(&mut h.earliest_keepalive, Some(now + KEEPALIVE_TIMEOUT));
                }
            }
            Event::AuthenticatedPacketSent => self.timers.authenticated_packet_sent(now),
            Event::AuthenticatedPacketReceived => self.timers.authenticated_packet_received(now),
            Event::AuthenticatedPacketTraversal => {
                self.timers.authenticated_packet_traversal(now);
                if let (true, Some(interval)) = (h.running, h.persistent_keepalive) {
                    let period = Duration::from_secs(u64::from(interval.get()));
                    earliest(&mut h.earliest_keepalive, Some(now + period));
                }
            }
            Event::HandshakeInitiated => {
                self.timers.handshake_initiated(now, &mut self.rng);
                h.last_handshake_message = Some(now);
                if h.running {
                    h.last_initiated = Some(now);
                }
            }
            Event::HandshakeResponseSent => {
                self.timers.handshake_response_sent(now);
                h.last_handshake_message = Some(now);
            }
            Event::HandshakeComplete => {
                self.timers.handshake_complete(now);
                h.sent_last_minute_handshake = false;
                self.reset_attempt();
            }
            Event::SessionDerived => {
                self.timers.session_derived(now);
                if h.running {
                    earliest(&mut h.first_zeroing_origin, Some(now));
                }
            }
            Event::WantHandshake => {
                let running = h.running;
                let allowed = self.timers.want_handshake(now);
                assert!(running || !allowed, "initiation allowed while stopped");
                if running {
                    self.reset_attempt();
                }
                if allowed {
                    self.check_initiation_allowed();
                    self.driver_sends_initiation();
                }
            }
            Event::WantLastMinuteHandshake => {
                let asks = h.running && !h.sent_last_minute_handshake;
                let allowed = self.timers.want_last_minute_handshake(now);
                assert!(asks || !allowed, "last-minute handshake asked twice");
                if asks {
                    self.history.sent_last_minute_handshake = true;
                    self.reset_attempt();
                }
                if allowed {
                    self.check_initiation_allowed();
                    self.driver_sends_initiation();
                }
            }
            Event::SetPersistentKeepalive(interval) => {
                let turned_on = h.persistent_keepalive.is_none() && interval.is_some();
                self.timers.set_persistent_keepalive(interval, now);
                h.persistent_keepalive = interval;
                if turned_on && h.running {
                    earliest(&mut h.earliest_keepalive, Some(now));
                }
            }
            Event::Stop => {
                self.timers.stop();
                h.running = false;
                h.last_initiated = None;
                h.earliest_keepalive = None;
                h.first_data_sent = None;
                h.first_zeroing_origin = None;
            }
            Event::Start => {
                self.timers.start(now);
                h.running = true;
                h.sent_last_minute_handshake = false;
                if h.persistent_keepalive.is_some() {
                    earliest(&mut h.earliest_keepalive, Some(now));
                }
                self.reset_attempt();
            }
        }
        if let Some(last_drain) = self.history.last_drain {
            let deadline = self.timers.next_deadline();
            assert!(
                deadline.is_none_or(|deadline| deadline >= last_drain),
                "deadline before the last poll after {event:?}"
            );
        }
    }

    fn driver_sends_initiation(&mut self) {
        if self.driver_sends {
            self.apply(&Event::AuthenticatedPacketTraversal);
            self.apply(&Event::AuthenticatedPacketSent);
            self.apply(&Event::HandshakeInitiated);
        }
    }

    /// Drains `poll` at the current time, checking every action against the history.
    fn drain(&mut self) {
        let now = self.now;
        for _ in 0..16 {
            let deadline = self.timers.next_deadline();
            let attempts_before = self.timers.handshake_attempts();
            let action = self.timers.poll(now);
            // A new-handshake expiry refused by the rate limit starts a new attempt without
            // an action, as wireguard-go's SendHandshakeInitiation(false) does: only such a
            // reset lowers the counter inside poll (a retransmission raises it by one).
            let raised_by = u32::from(action == Some(TimerAction::SendInitiation { retry: true }));
            if self.timers.handshake_attempts() < attempts_before + raised_by {
                self.reset_attempt();
            }
            let Some(action) = action else {
                self.history.last_drain = Some(now);
                let next = self.timers.next_deadline();
                assert!(
                    next.is_none_or(|next| next > now),
                    "poll left an expired timer"
                );
                return;
            };
            assert!(
                deadline.is_some_and(|deadline| deadline <= now),
                "{action:?} before any deadline"
            );
            self.check_action(action);
        }
        panic!("poll keeps returning actions at one instant");
    }

    fn check_action(&mut self, action: TimerAction) {
        let now = self.now;
        let h = &mut self.history;
        assert!(h.running, "{action:?} while stopped");
        let not_before = |origin: Option<Instant>, after: Duration| {
            origin.is_some_and(|origin| origin + after <= now)
        };
        match action {
            TimerAction::SendInitiation { retry: true } => {
                assert!(
                    not_before(h.last_initiated, REKEY_TIMEOUT),
                    "early retransmission"
                );
                assert!(!h.gave_up_since_reset, "retransmission after giving up");
                h.retries_since_reset += 1;
                assert!(
                    h.retries_since_reset <= MAX_TIMER_HANDSHAKES + 1,
                    "{} retransmissions in one attempt",
                    h.retries_since_reset
                );
                self.check_initiation_allowed();
                self.driver_sends_initiation();
            }
            TimerAction::SendInitiation { retry: false } => {
                let after = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT;
                assert!(not_before(h.first_data_sent, after), "early new handshake");
                self.reset_attempt();
                self.check_initiation_allowed();
                self.driver_sends_initiation();
            }
            TimerAction::SendKeepalive => {
                assert!(
                    not_before(h.earliest_keepalive, Duration::ZERO),
                    "early keepalive"
                );
                if self.driver_sends {
                    self.apply(&Event::AuthenticatedPacketTraversal);
                    self.apply(&Event::AuthenticatedPacketSent);
                }
            }
            TimerAction::GiveUp => {
                assert!(not_before(h.last_initiated, REKEY_TIMEOUT), "early give-up");
                h.gave_up_since_reset = true;
                earliest(&mut h.first_zeroing_origin, Some(now));
            }
            TimerAction::ZeroKeyMaterial => {
                let after = REJECT_AFTER_TIME * 3;
                assert!(
                    not_before(h.first_zeroing_origin, after),
                    "early key zeroing"
                );
            }
        }
        assert!(self.timers.handshake_attempts() <= MAX_TIMER_HANDSHAKES + 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn timers_never_fire_early_and_retry_at_most_max_timer_handshakes_plus_one(
        events in proptest::collection::vec(event(), 1..300),
        persistent_keepalive in proptest::option::of(1u16..=60),
        driver_sends in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let interval = persistent_keepalive.and_then(NonZeroU16::new);
        let mut harness = Harness::new(interval, driver_sends, seed);
        for event in &events {
            harness.apply(event);
            harness.drain();
        }
    }
}
