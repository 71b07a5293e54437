//! keyd's side of the channel to the data plane, sans-IO: every message from datad is
//! checked for what it means, the memory it may cost is bounded, and what keyd sends is
//! queued here so the event loop never waits on datad. The service does the I/O; this
//! module decides, with `now` and the wall clock as arguments.
//!
//! A data plane that breaks the rules is given up on ([`Misbehaviour`]): keyd closes the
//! channel and asks the monitor to kill it and start another. Nothing datad sends can
//! crash, freeze or bloat keyd:
//! - statistics answer only the one request in flight, name each configured peer at most
//!   once, carry times the clock can hold, and arrive within [`STATS_TIMEOUT`];
//! - what keyd sends waits in a bounded queue; a datad that stops reading for
//!   [`STALL_TIMEOUT`], or lets the queue pass [`MAX_OUTBOX_BYTES`], is stalled;
//! - handshake work (one or more Curve25519 operations per message) is limited to
//!   [`HANDSHAKES_PER_SECOND`] with a burst of [`HANDSHAKE_BURST`], and to
//!   [`WORK_SHARE_PERCENT`] of keyd's time (its CPU time, measured, so the bound holds on
//!   any machine and build; at half, a responder completed half as many handshakes
//!   under the benchmark's flood); the excess is dropped, as a full handshake queue drops it in
//!   wireguard-go. Initiations are further limited per peer by the handshake oracle (one
//!   per `REKEY_TIMEOUT`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wg_messages::messages::{DatadToKeyd, KeydToDatad, Misbehaviour, PeerStats};
use wg_uapi::PeerRuntime;
use wg_wire::PublicKey;
use zeroize::Zeroizing;

use rand::CryptoRng;

use crate::handshakes::{Answer, Handshakes, Refusal};

/// A statistics request must be answered completely within this time.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(1);
/// Messages for datad may wait this long without datad reading any of them.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes of messages waiting for datad. The largest configuration UAPI accepts
/// (65,536 peers, 1,048,576 allowed IPs) takes about 30 MiB.
pub const MAX_OUTBOX_BYTES: usize = 64 << 20;
/// Handshake messages and initiation requests served per second, at most.
pub const HANDSHAKES_PER_SECOND: u64 = 16_384;
/// Handshake work that may arrive at once.
pub const HANDSHAKE_BURST: u64 = 2_048;
/// Share of keyd's time that the data plane's requests may take; the rest is kept for
/// UAPI, the monitor, and reading (and dropping) whatever else datad sends.
pub const WORK_SHARE_PERCENT: u32 = 90;
/// Handshake messages taken per [`KeydToDatad::HandshakesTaken`] report. Up to one step
/// less may stay unreported: far below the queue length at which datad demands cookies
/// (512), so an idle keyd owes nothing that matters, and a flood costs one more small
/// message per 32 handshakes.
pub const TAKEN_REPORT_STEP: u32 = 32;
/// Work time that may be spent at once before the share applies.
const WORK_BURST: Duration = Duration::from_millis(250);
/// A last handshake may be this far ahead of keyd's clock (both read the same clock an
/// instant apart; the slack only covers a clock being set meanwhile).
const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(3600);

/// Statistics being collected for one request.
#[derive(Debug)]
struct PendingStats {
    request: u32,
    sent: Instant,
    /// Peers datad knew when it answered: the configuration when the request was sent
    /// (datad handles keyd's messages in order).
    expected: usize,
    peers: HashMap<PublicKey, PeerRuntime>,
}

/// A finished statistics answer: runtime values per peer.
pub type StatsAnswer = HashMap<PublicKey, PeerRuntime>;

/// What came of a message from datad.
#[derive(Debug, Default)]
pub struct Outcome {
    /// A statistics request completed.
    pub stats: Option<StatsAnswer>,
    /// Handshake work dropped by the rate limit (for the log).
    pub dropped: bool,
}

/// A token bucket in nanoseconds of credit.
#[derive(Debug)]
struct Bucket {
    credit_ns: u64,
    last: Option<Instant>,
}

const NS_PER_TOKEN: u64 = 1_000_000_000 / HANDSHAKES_PER_SECOND;

impl Bucket {
    fn new() -> Self {
        Self {
            credit_ns: NS_PER_TOKEN * HANDSHAKE_BURST,
            last: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = self
            .last
            .map_or(0, |t| now.saturating_duration_since(t).as_nanos());
        let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX);
        self.credit_ns = self
            .credit_ns
            .saturating_add(elapsed)
            .min(NS_PER_TOKEN * HANDSHAKE_BURST);
        self.last = Some(now);
        if self.credit_ns >= NS_PER_TOKEN {
            self.credit_ns -= NS_PER_TOKEN;
            true
        } else {
            false
        }
    }
}

/// Time keyd may spend on the data plane's requests: credit accrues at
/// [`WORK_SHARE_PERCENT`] of wall time, up to [`WORK_BURST`]; measured work is charged.
#[derive(Debug)]
struct WorkBudget {
    credit: Duration,
    debt: Duration,
    last: Option<Instant>,
}

impl WorkBudget {
    fn new() -> Self {
        Self {
            credit: WORK_BURST,
            debt: Duration::ZERO,
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.last = Some(now);
        let earned = elapsed * WORK_SHARE_PERCENT / 100;
        let repaid = earned.min(self.debt);
        self.debt -= repaid;
        self.credit = (self.credit + (earned - repaid)).min(WORK_BURST);
    }

    fn available(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.debt.is_zero() && !self.credit.is_zero()
    }

    fn charge(&mut self, spent: Duration) {
        let paid = spent.min(self.credit);
        self.credit -= paid;
        self.debt += spent - paid;
    }
}

/// keyd's bookkeeping of one data plane. Its queue holds encoded session keys, so `Debug`
/// shows sizes only.
pub struct DatadLink {
    outbox: VecDeque<Zeroizing<Vec<u8>>>,
    outbox_bytes: usize,
    /// Since when the outbox has held messages datad did not take.
    waiting_since: Option<Instant>,
    next_request: u32,
    stats: Option<PendingStats>,
    handshake_budget: Bucket,
    work: WorkBudget,
    max_outbox_bytes: usize,
    /// Handshake messages taken and not yet reported to datad.
    taken_unreported: u32,
}

impl std::fmt::Debug for DatadLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatadLink")
            .field("queued_messages", &self.outbox.len())
            .field("queued_bytes", &self.outbox_bytes)
            .field("waiting_since", &self.waiting_since)
            .field("stats_pending", &self.stats.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for DatadLink {
    fn default() -> Self {
        Self::new()
    }
}

impl DatadLink {
    /// A link to a freshly started data plane.
    pub fn new() -> Self {
        Self {
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            waiting_since: None,
            next_request: 0,
            stats: None,
            handshake_budget: Bucket::new(),
            work: WorkBudget::new(),
            max_outbox_bytes: MAX_OUTBOX_BYTES,
            taken_unreported: 0,
        }
    }

    /// Queues `messages` for datad. Encoding cannot fail for the messages keyd builds
    /// (allowed IPs travel in chunks); if it ever did, that is a bug of ours, logged and
    /// the message dropped, never mistaken for a failure of the data plane.
    pub fn queue(
        &mut self,
        messages: impl IntoIterator<Item = KeydToDatad>,
        now: Instant,
    ) -> Result<(), Misbehaviour> {
        for msg in messages {
            match wg_messages::encode(&msg) {
                Ok(bytes) => {
                    self.outbox_bytes += bytes.len();
                    self.outbox.push_back(Zeroizing::new(bytes));
                    self.waiting_since.get_or_insert(now);
                }
                Err(e) => tracing::error!("BUG: cannot encode a message for the data plane: {e}"),
            }
        }
        if self.outbox_bytes > self.max_outbox_bytes {
            return Err(Misbehaviour::Stalled);
        }
        Ok(())
    }

    /// The next message to send, if any.
    pub fn front(&self) -> Option<&Zeroizing<Vec<u8>>> {
        self.outbox.front()
    }

    /// The front message went out: datad is reading.
    pub fn sent_front(&mut self, now: Instant) {
        if let Some(bytes) = self.outbox.pop_front() {
            self.outbox_bytes -= bytes.len();
        }
        self.waiting_since = if self.outbox.is_empty() {
            None
        } else {
            Some(now)
        };
    }

    /// Whether messages wait for datad.
    pub fn has_backlog(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Starts a statistics request unless one is in flight. Returns whether a new one
    /// was queued (its answer serves every `get` waiting meanwhile).
    pub fn request_stats(&mut self, peers: usize, now: Instant) -> Result<bool, Misbehaviour> {
        if self.stats.is_some() {
            return Ok(false);
        }
        let request = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        self.queue([KeydToDatad::StatsRequest { request }], now)?;
        self.stats = Some(PendingStats {
            request,
            sent: now,
            expected: peers,
            peers: HashMap::new(),
        });
        Ok(true)
    }

    /// Whether a statistics request is in flight.
    pub fn stats_pending(&self) -> bool {
        self.stats.is_some()
    }

    /// When [`DatadLink::check_deadlines`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let stats = self.stats.as_ref().map(|s| s.sent + STATS_TIMEOUT);
        let stall = self.waiting_since.map(|t| t + STALL_TIMEOUT);
        match (stats, stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Gives up on a data plane that is late answering or reading.
    pub fn check_deadlines(&self, now: Instant) -> Result<(), Misbehaviour> {
        if self
            .waiting_since
            .is_some_and(|t| now.saturating_duration_since(t) >= STALL_TIMEOUT)
        {
            return Err(Misbehaviour::Stalled);
        }
        if self
            .stats
            .as_ref()
            .is_some_and(|s| now.saturating_duration_since(s.sent) >= STATS_TIMEOUT)
        {
            return Err(Misbehaviour::StatsTimeout);
        }
        Ok(())
    }

    /// Charges the CPU time keyd spent on a message from datad (the service measures it
    /// around [`DatadLink::on_message`]).
    pub fn charge_work(&mut self, spent: Duration) {
        self.work.charge(spent);
    }

    /// Handles one message from datad: checks it, lets the handshake oracle answer what
    /// is its to answer (within the rate limit), and queues the answers. `wall` and `rng`
    /// go to the oracle (the timestamp of initiations; ephemeral keys and indices). What
    /// the oracle refuses is only logged: a refusal sends nothing and costs datad nothing.
    pub fn on_message<R: CryptoRng + ?Sized>(
        &mut self,
        msg: DatadToKeyd,
        handshakes: &mut Handshakes,
        now: Instant,
        wall: SystemTime,
        rng: &mut R,
    ) -> Result<Outcome, Misbehaviour> {
        let mut outcome = Outcome::default();
        if msg.is_handshake() {
            // Taken, whatever happens to it below (answered, refused or dropped).
            self.taken_unreported += 1;
            if self.taken_unreported >= TAKEN_REPORT_STEP {
                let count = std::mem::take(&mut self.taken_unreported);
                self.queue([KeydToDatad::HandshakesTaken { count }], now)?;
            }
        }
        match msg {
            // A repeated hello changes nothing (the version was checked with the first).
            DatadToKeyd::Hello(_) => {}
            DatadToKeyd::Stats {
                request,
                peers,
                done,
            } => outcome.stats = self.on_stats(request, peers, done, wall)?,
            DatadToKeyd::Handshake { .. } | DatadToKeyd::WantHandshake { .. } => {
                if self.work.available(now) && self.handshake_budget.take(now) {
                    let mut out = Vec::new();
                    refused(handshakes.on_datad(msg, now, wall, rng, &mut out));
                    self.queue(out, now)?;
                } else {
                    outcome.dropped = true;
                }
            }
            // Cheap (a MAC check or table look-ups), bounded by the message size.
            DatadToKeyd::CookieReply { .. }
            | DatadToKeyd::ZeroKeys { .. }
            | DatadToKeyd::RetiredIndices { .. } => {
                let mut out = Vec::new();
                refused(handshakes.on_datad(msg, now, wall, rng, &mut out));
                self.queue(out, now)?;
            }
        }
        Ok(outcome)
    }

    fn on_stats(
        &mut self,
        request: u32,
        peers: Vec<PeerStats>,
        done: bool,
        wall: SystemTime,
    ) -> Result<Option<StatsAnswer>, Misbehaviour> {
        let Some(pending) = self.stats.as_mut().filter(|p| p.request == request) else {
            // An answer to nothing: no honest data plane sends one.
            return Err(Misbehaviour::Implausible);
        };
        if pending.peers.len() + peers.len() > pending.expected {
            return Err(Misbehaviour::Implausible);
        }
        for s in peers {
            let runtime = PeerRuntime {
                endpoint: s.endpoint,
                last_handshake: s
                    .last_handshake
                    .map(|(secs, nanos)| plausible_time(secs, nanos, wall))
                    .transpose()?,
                rx_bytes: s.rx_bytes,
                tx_bytes: s.tx_bytes,
            };
            if pending.peers.insert(s.public_key, runtime).is_some() {
                return Err(Misbehaviour::Implausible);
            }
        }
        if !done {
            return Ok(None);
        }
        Ok(self.stats.take().map(|p| p.peers))
    }
}

/// Logs a refusal of the handshake oracle (which logs the details it has, such as the
/// source address, itself). An honest data plane meets some too: a late response, a
/// cookie reply for an index since retired.
fn refused(result: Result<Answer, Refusal>) {
    if let Err(refusal) = result {
        tracing::trace!("request of the data plane refused: {refusal}");
    }
}

/// A handshake time from datad, if it can be true: nanoseconds below one second, and not
/// after keyd's clock (with slack for a clock set meanwhile).
fn plausible_time(secs: u64, nanos: u32, wall: SystemTime) -> Result<SystemTime, Misbehaviour> {
    if nanos >= 1_000_000_000 {
        return Err(Misbehaviour::Implausible);
    }
    let at = UNIX_EPOCH
        .checked_add(Duration::new(secs, nanos))
        .ok_or(Misbehaviour::Implausible)?;
    let latest = wall
        .checked_add(MAX_CLOCK_AHEAD)
        .ok_or(Misbehaviour::Implausible)?;
    if at > latest {
        return Err(Misbehaviour::Implausible);
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn stats(key: u8, last_handshake: Option<(u64, u32)>) -> PeerStats {
        PeerStats {
            public_key: PublicKey([key; 32]),
            endpoint: None,
            last_handshake,
            rx_bytes: 1,
            tx_bytes: 2,
        }
    }

    /// Every handshake message counts as taken, answered or not; the count goes to datad
    /// every [`TAKEN_REPORT_STEP`], and nothing else counts.
    #[test]
    fn handshake_messages_taken_are_reported_in_steps() {
        let mut link = DatadLink::new();
        let mut hs = Handshakes::new();
        let mut rng = StdRng::seed_from_u64(1);
        let now = Instant::now();
        let handshake = || DatadToKeyd::Handshake {
            message: vec![1; 148],
            source: "192.0.2.1:51820".parse().unwrap(),
        };
        let mut send = |link: &mut DatadLink, msg| {
            link.on_message(msg, &mut hs, now, SystemTime::now(), &mut rng)
                .unwrap();
        };
        let reports = |link: &mut DatadLink| {
            let mut counts = Vec::new();
            while let Some(bytes) = link.front() {
                if let Ok(KeydToDatad::HandshakesTaken { count }) =
                    wg_messages::decode::<KeydToDatad>(bytes)
                {
                    counts.push(count);
                }
                link.sent_front(now);
            }
            counts
        };
        for _ in 0..TAKEN_REPORT_STEP - 1 {
            send(&mut link, handshake());
        }
        let want = DatadToKeyd::WantHandshake {
            public_key: PublicKey([9; 32]),
            retry: false,
        };
        send(&mut link, want);
        send(
            &mut link,
            DatadToKeyd::CookieReply {
                message: vec![3; 64],
            },
        );
        assert_eq!(reports(&mut link), vec![TAKEN_REPORT_STEP]);
        for _ in 0..TAKEN_REPORT_STEP * 2 + 5 {
            send(&mut link, handshake());
        }
        assert_eq!(
            reports(&mut link),
            vec![TAKEN_REPORT_STEP, TAKEN_REPORT_STEP]
        );
    }

    fn answer(
        link: &mut DatadLink,
        request: u32,
        peers: Vec<PeerStats>,
        done: bool,
    ) -> Result<Outcome, Misbehaviour> {
        let mut hs = Handshakes::new();
        let msg = DatadToKeyd::Stats {
            request,
            peers,
            done,
        };
        let mut rng = StdRng::seed_from_u64(1);
        link.on_message(msg, &mut hs, Instant::now(), SystemTime::now(), &mut rng)
    }

    #[test]
    fn a_complete_answer_is_collected_from_chunks() {
        let mut link = DatadLink::new();
        let t0 = Instant::now();
        assert!(link.request_stats(3, t0).unwrap());
        assert!(!link.request_stats(3, t0).unwrap(), "one request at a time");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let first = answer(&mut link, 0, vec![stats(1, Some((now, 5)))], false).unwrap();
        assert!(first.stats.is_none());
        let done = answer(&mut link, 0, vec![stats(2, None), stats(3, None)], true).unwrap();
        let got = done.stats.unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[&PublicKey([1; 32])].last_handshake,
            Some(UNIX_EPOCH + Duration::new(now, 5))
        );
        assert!(!link.stats_pending());
    }

    #[test]
    fn impossible_times_are_refused_without_overflow() {
        let wall = SystemTime::now();
        for (secs, nanos) in [(u64::MAX, 0), (u64::MAX, 999_999_999), (0, 1_000_000_000)] {
            assert_eq!(
                plausible_time(secs, nanos, wall),
                Err(Misbehaviour::Implausible),
                "{secs}.{nanos}"
            );
        }
        let in_a_day = wall.duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(86_400);
        assert!(plausible_time(in_a_day.as_secs(), 0, wall).is_err());
        assert!(plausible_time(0, 0, wall).is_ok());
        let mut link = DatadLink::new();
        link.request_stats(1, Instant::now()).unwrap();
        assert_eq!(
            answer(&mut link, 0, vec![stats(1, Some((u64::MAX, 0)))], true).unwrap_err(),
            Misbehaviour::Implausible
        );
    }

    #[test]
    fn answers_are_bounded_by_the_configuration() {
        let mut link = DatadLink::new();
        link.request_stats(2, Instant::now()).unwrap();
        answer(&mut link, 0, vec![stats(1, None)], false).unwrap();
        // The same peer twice.
        assert_eq!(
            answer(&mut link, 0, vec![stats(1, None)], false).unwrap_err(),
            Misbehaviour::Implausible
        );
        let mut link = DatadLink::new();
        link.request_stats(2, Instant::now()).unwrap();
        // More peers than are configured, over several chunks: refused before they are
        // kept (600 chunks of 256 took keyd to 115 MB before this check).
        answer(&mut link, 0, vec![stats(1, None), stats(2, None)], false).unwrap();
        assert_eq!(
            answer(&mut link, 0, vec![stats(3, None)], false).unwrap_err(),
            Misbehaviour::Implausible
        );
    }

    #[test]
    fn answers_to_no_request_are_refused() {
        let mut link = DatadLink::new();
        assert_eq!(
            answer(&mut link, 0, Vec::new(), true).unwrap_err(),
            Misbehaviour::Implausible
        );
        link.request_stats(0, Instant::now()).unwrap();
        assert_eq!(
            answer(&mut link, 7, Vec::new(), true).unwrap_err(),
            Misbehaviour::Implausible
        );
        assert!(
            answer(&mut link, 0, Vec::new(), true)
                .unwrap()
                .stats
                .is_some()
        );
        // Finished: a second "done" answers nothing.
        assert_eq!(
            answer(&mut link, 0, Vec::new(), true).unwrap_err(),
            Misbehaviour::Implausible
        );
    }

    #[test]
    fn late_answers_and_unread_messages_time_out() {
        let t0 = Instant::now();
        let mut link = DatadLink::new();
        assert_eq!(link.next_deadline(), None);
        link.request_stats(1, t0).unwrap();
        assert_eq!(link.next_deadline(), Some(t0 + STATS_TIMEOUT));
        link.sent_front(t0);
        assert!(link.check_deadlines(t0 + STATS_TIMEOUT / 2).is_ok());
        assert_eq!(
            link.check_deadlines(t0 + STATS_TIMEOUT),
            Err(Misbehaviour::StatsTimeout)
        );

        let mut link = DatadLink::new();
        link.queue([KeydToDatad::ClearPeers, KeydToDatad::ClearPeers], t0)
            .unwrap();
        // Reading one message restarts the clock: a slow reader is not a stalled one.
        link.sent_front(t0 + STALL_TIMEOUT / 2);
        assert!(link.check_deadlines(t0 + STALL_TIMEOUT).is_ok());
        assert_eq!(
            link.check_deadlines(t0 + STALL_TIMEOUT / 2 + STALL_TIMEOUT),
            Err(Misbehaviour::Stalled)
        );
        link.sent_front(t0 + STALL_TIMEOUT);
        assert!(!link.has_backlog());
        assert!(link.check_deadlines(t0 + STALL_TIMEOUT * 10).is_ok());
    }

    #[test]
    fn queued_session_keys_are_not_debug_printed() {
        let mut link = DatadLink::new();
        let keys = KeydToDatad::Session(wg_messages::messages::SessionKeys {
            public_key: PublicKey([1; 32]),
            initiator: true,
            local_index: 1,
            remote_index: 2,
            send: wg_messages::messages::SecretBytes([0xab; 32]),
            recv: wg_messages::messages::SecretBytes([0xcd; 32]),
            endpoint: None,
        });
        link.queue([keys], Instant::now()).unwrap();
        let shown = format!("{link:?}");
        // The key bytes as Debug would print them (decimal or hex runs), not a lone "205",
        // which a printed Instant may hold (seen under Wine: "20542.72s").
        for leak in ["171, 171", "205, 205", "abab", "cdcd"] {
            assert!(!shown.contains(leak), "{shown}");
        }
        assert!(shown.contains("queued_messages: 1"), "{shown}");
    }

    #[test]
    fn the_outbox_is_bounded() {
        let mut link = DatadLink {
            max_outbox_bytes: 1 << 20,
            ..DatadLink::new()
        };
        let t0 = Instant::now();
        let big = KeydToDatad::AllowedIps {
            public_key: PublicKey([1; 32]),
            allowed_ips: vec!["10.0.0.0/8".parse().unwrap(); 2048],
            more: true,
        };
        let per_message = wg_messages::encode(&big).unwrap().len();
        let fits = (1 << 20) / per_message;
        link.queue(std::iter::repeat_n(big.clone(), fits), t0)
            .unwrap();
        assert_eq!(link.queue([big], t0), Err(Misbehaviour::Stalled));
    }

    /// Whether a `WantHandshake` at `at` is served (not dropped by the limits).
    fn served(link: &mut DatadLink, hs: &mut Handshakes, at: Instant) -> bool {
        let want = DatadToKeyd::WantHandshake {
            public_key: PublicKey([9; 32]),
            retry: false,
        };
        let mut rng = StdRng::seed_from_u64(1);
        !link
            .on_message(want, hs, at, SystemTime::now(), &mut rng)
            .unwrap()
            .dropped
    }

    #[test]
    fn handshake_work_is_limited_to_a_share_of_keyd_time() {
        let mut link = DatadLink::new();
        let mut hs = Handshakes::new();
        let t0 = Instant::now();
        let mut served = |link: &mut DatadLink, at: Instant| served(link, &mut hs, at);
        assert!(served(&mut link, t0));
        // Slow work (a slow machine, a debug build): one second of it.
        link.charge_work(Duration::from_secs(1));
        assert!(!served(&mut link, t0 + Duration::from_millis(10)));
        // 250 ms of it came from the burst; the other 750 ms are repaid at the share.
        let repaid = Duration::from_millis(750) * 100 / WORK_SHARE_PERCENT;
        assert!(!served(&mut link, t0 + repaid - Duration::from_millis(50)));
        assert!(served(&mut link, t0 + repaid + Duration::from_millis(50)));
    }

    #[test]
    fn handshake_work_is_rate_limited() {
        let mut link = DatadLink::new();
        let mut hs = Handshakes::new();
        let t0 = Instant::now();
        let dropped = (0..HANDSHAKE_BURST * 2)
            .filter(|_| !served(&mut link, &mut hs, t0))
            .count();
        assert_eq!(dropped as u64, HANDSHAKE_BURST);
        // One second refills the bucket up to its burst.
        let later = t0 + Duration::from_secs(1);
        let served = (0..HANDSHAKE_BURST * 2)
            .filter(|_| served(&mut link, &mut hs, later))
            .count();
        assert_eq!(served as u64, HANDSHAKE_BURST);
    }
}
