//! A compromised data plane against the real, sandboxed key process: keyd must treat every
//! message from datad as hostile. The test process is keyd's monitor and its data plane
//! (`wg_e2e::fake_monitor`), and the data plane lies (impossible statistics, answers to no
//! request), floods (stats chunks, handshake messages with a valid MAC1, `WantHandshake`,
//! cookie replies, retired indices), stays silent, or stops reading.
//!
//! The contract: keyd never aborts or blocks on datad. A data plane that misbehaves is
//! reported to the monitor (`RestartDataPlane` with the reason) and its channel closed;
//! UAPI keeps answering from keyd's own configuration, within about a second, until the
//! monitor hands over a new data plane (`DataPlaneRestarted`), which gets the whole
//! configuration again. Floods are rate-limited without a restart; keyd's memory stays
//! bounded.
//!
//! Each test runs one keyd (stopped by its PID when the test ends) with a tokio
//! current-thread runtime on the test's thread (keyd dies with the thread that started
//! it). UAPI clients run on blocking threads, so their timings do not depend on the
//! runtime's other tasks.
// Linux only: network namespaces and the Linux daemon.
#![cfg(target_os = "linux")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use wg_e2e::fake_monitor::{
    FakeDatad, Keyd, Rng, StatsPolicy, UapiAnswer, hex, key_bytes, keyd_user, keys,
};
use wg_e2e::proc::{CAP_SETS, Status, inet_sockets, root_dir, socket_inodes, unix_sockets};
use wg_e2e::{Env, setup};
use wg_ipc::Channel;
use wg_ipc::messages::{DatadToKeyd, Misbehaviour, PeerStats, STATS_PER_MESSAGE};
use wg_wire::{COOKIE_REPLY_LEN, INITIATION_LEN, PublicKey, RESPONSE_LEN};

/// Generous bound for UAPI requests whose latency is not what a test measures.
const UAPI_TIMEOUT: Duration = Duration::from_secs(5);
/// How fast UAPI must answer while the data plane misbehaves: a `get` waits at most
/// keyd's `STATS_TIMEOUT` (1 s) for the statistics, plus the work of a 2,000-peer answer in
/// a debug build on a loaded 2-core machine (1.5 s was exceeded by 12 ms under a parallel
/// build); still under the 3 s after which keyd gives up on a stalled data plane, so a
/// `get` that waited for the restart instead would fail.
const RESPONSIVE: Duration = Duration::from_millis(2500);
/// The contract's statistics timeout is 1 s; the answer may take this long.
const STATS_ANSWER_BOUND: Duration = Duration::from_millis(1500);
/// How long keyd may take to report a lie it received.
const REPORT_BOUND: Duration = Duration::from_secs(3);
/// keyd's peak resident memory while flooded with statistics chunks must stay below this.
const RSS_BOUND_KIB: u64 = 32 * 1024;
/// keyd's root directory after start-up.
const EMPTY_ROOT: &str = "/run/wireguard-rs/empty";

/// The tests measure latencies of a single-threaded keyd on a small machine: they run one at
/// a time, so one test's flood does not slow another's keyd.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the test's runtime")
}

/// Runs `test` with a fresh keyd and the test's end of its first data-plane channel, on a
/// current-thread runtime on this thread, one test at a time ([`serial`]); a failure
/// carries keyd's diagnostics.
fn with_keyd(env: &Env, test: impl AsyncFnOnce(&mut Keyd, Channel) -> Result<()>) -> Result<()> {
    let _serial = serial();
    runtime()?.block_on(async {
        let (mut keyd, ch) = Keyd::start(env).await?;
        let r = test(&mut keyd, ch).await;
        r.with_context(|| keyd.diag())
    })
}

/// The keys of [`with_one_peer`]'s configuration.
#[derive(Clone, Copy, Debug)]
struct OnePeer {
    /// The interface's public key.
    public: [u8; 32],
    /// The one peer's public key.
    peer: [u8; 32],
}

/// [`with_keyd`] with keyd configured over UAPI with an interface key and one peer
/// (10.9.0.2/32), and a fake data plane with `policy` that has received both.
fn with_one_peer(
    env: &Env,
    policy: StatsPolicy,
    test: impl AsyncFnOnce(&mut Keyd, FakeDatad, OnePeer) -> Result<()>,
) -> Result<()> {
    let (iface, peer) = (keys(env, "i")?, keys(env, "p")?);
    let one = OnePeer {
        public: key_bytes(&iface.public)?,
        peer: key_bytes(&peer.public)?,
    };
    let private = hex(&key_bytes(&iface.private)?);
    with_keyd(env, async move |keyd: &mut Keyd, ch: Channel| {
        let datad = FakeDatad::spawn(ch, policy);
        keyd.uapi_ok(
            set_request(Some(&private), &[(one.peer, "10.9.0.2/32".into())]),
            UAPI_TIMEOUT,
        )
        .await?;
        datad
            .wait_configured(Some(one.public), 1, UAPI_TIMEOUT)
            .await?;
        test(keyd, datad, one).await
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// `set=1` with an optional private key (hex) and peers (public key, one allowed IP).
fn set_request(private_hex: Option<&str>, peers: &[([u8; 32], String)]) -> String {
    let mut s = String::from("set=1\n");
    if let Some(k) = private_hex {
        s.push_str(&format!("private_key={k}\n"));
    }
    for (key, ip) in peers {
        s.push_str(&format!("public_key={}\nallowed_ip={ip}\n", hex(key)));
    }
    s.push('\n');
    s
}

/// The `n`-th distinct /32.
fn nth_ip(n: usize) -> String {
    format!("10.{}.{}.{}/32", 100 + n / 65536, (n / 256) % 256, n % 256)
}

/// `n` made-up peers (random keys, distinct /32s).
fn made_up_peers(rng: &mut Rng, n: usize) -> Vec<([u8; 32], String)> {
    (0..n).map(|i| (rng.key(), nth_ip(i))).collect()
}

/// A `get` answered from keyd's configuration without runtime statistics: every
/// `expected` peer is there, and nobody has counters or a handshake time.
fn check_config_only(a: &UapiAnswer, expected: &[[u8; 32]]) -> Result<()> {
    ensure!(a.errno == Some(0), "get answered errno {:?}", a.errno);
    let shown = a.values("public_key");
    for k in expected {
        let h = hex(k);
        ensure!(
            shown.contains(&h.as_str()),
            "peer {h} missing from the get answer ({} peers shown)",
            shown.len()
        );
    }
    ensure!(
        shown.len() == expected.len(),
        "get shows {} peers, want {}",
        shown.len(),
        expected.len()
    );
    for key in [
        "rx_bytes",
        "tx_bytes",
        "last_handshake_time_sec",
        "last_handshake_time_nsec",
    ] {
        let bad: Vec<&str> = a.values(key).into_iter().filter(|v| *v != "0").collect();
        ensure!(
            bad.is_empty(),
            "get without statistics shows {key}={bad:?} (a lie of the data plane reached UAPI?)"
        );
    }
    Ok(())
}

/// A get the data plane answers truthfully with counters: they must show up, so keyd and
/// this fake data plane agree on the protocol. Returns the request id answered.
async fn honest_get(keyd: &Keyd, datad: &mut FakeDatad, peer: [u8; 32]) -> Result<u32> {
    let get = keyd.uapi_background("get=1\n\n".into(), UAPI_TIMEOUT);
    let request = datad.next_stats_request(UAPI_TIMEOUT).await?;
    let when = unix_now() - 10;
    let stats = PeerStats {
        public_key: PublicKey(peer),
        endpoint: Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            51820,
        )),
        last_handshake: Some((when, 5)),
        rx_bytes: 1234,
        tx_bytes: 5678,
    };
    let sent = datad
        .send(&DatadToKeyd::Stats {
            request,
            peers: vec![stats],
            done: true,
        })
        .await?;
    ensure!(
        sent,
        "keyd closed the data-plane channel before an honest answer"
    );
    let a = get.await??;
    ensure!(a.errno == Some(0), "honest get: errno {:?}", a.errno);
    for (key, want) in [
        ("rx_bytes", "1234".to_owned()),
        ("tx_bytes", "5678".to_owned()),
        ("last_handshake_time_sec", when.to_string()),
        ("endpoint", "192.0.2.1:51820".to_owned()),
    ] {
        ensure!(
            a.values(key) == [want.as_str()],
            "honest get: {key} is {:?}, want {want}; answer:\n{}",
            a.values(key),
            a.text
        );
    }
    Ok(request)
}

/// Gives keyd a fresh data plane (as the monitor does after a restart) and waits until it
/// has the whole configuration again: the interface key `public` and `peers` peers.
async fn new_data_plane(
    keyd: &mut Keyd,
    policy: StatsPolicy,
    public: Option<[u8; 32]>,
    peers: usize,
) -> Result<FakeDatad> {
    let ch = keyd.restart_data_plane().await?;
    let datad = FakeDatad::spawn(ch, policy);
    datad
        .wait_configured(public, peers, Duration::from_secs(10))
        .await
        .context("keyd did not re-send its configuration to the new data plane")?;
    Ok(datad)
}

/// keyd reported `want` for the current data plane and closed its channel; returns how
/// long the report took from `since` and when the channel closed.
async fn expect_restart(
    keyd: &mut Keyd,
    datad: &mut FakeDatad,
    want: Misbehaviour,
    since: Instant,
    within: Duration,
) -> Result<(Duration, Duration)> {
    let (reason, at) = keyd.next_restart(within).await?;
    ensure!(
        reason == want,
        "keyd reported {reason:?} ({reason}), want {want:?}"
    );
    let closed = datad.wait_closed(REPORT_BOUND).await?;
    keyd.ensure_alive()?;
    Ok((
        at.saturating_duration_since(since),
        closed.saturating_duration_since(since),
    ))
}

/// One lie about statistics.
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// Answers a pending get with this last-handshake time.
    HandshakeTime(u64, u32),
    /// A `Stats` for an id keyd never used.
    Unrequested,
    /// A second answer to a request keyd already finished.
    Finished,
}

/// Tells `lie`, then checks keyd's reaction; returns a report line.
async fn tell(keyd: &mut Keyd, datad: &mut FakeDatad, peer: [u8; 32], lie: Lie) -> Result<String> {
    ensure!(
        keyd.restarts_so_far().is_empty(),
        "keyd asked for a restart before the lie"
    );
    let bad = |request, last_handshake| DatadToKeyd::Stats {
        request,
        peers: vec![PeerStats {
            public_key: PublicKey(peer),
            endpoint: None,
            last_handshake,
            rx_bytes: 1,
            tx_bytes: 1,
        }],
        done: true,
    };
    let mut pending_get = None;
    let told = match lie {
        Lie::HandshakeTime(secs, nanos) => {
            pending_get = Some(keyd.uapi_background("get=1\n\n".into(), UAPI_TIMEOUT));
            let request = datad.next_stats_request(UAPI_TIMEOUT).await?;
            let at = Instant::now();
            datad.send(&bad(request, Some((secs, nanos)))).await?;
            at
        }
        Lie::Unrequested => {
            let at = Instant::now();
            datad.send(&bad(0xffff_0000, None)).await?;
            at
        }
        Lie::Finished => {
            let request = honest_get(keyd, datad, peer).await?;
            let at = Instant::now();
            datad.send(&bad(request, None)).await?;
            at
        }
    };
    let (reported, closed) =
        expect_restart(keyd, datad, Misbehaviour::Implausible, told, REPORT_BOUND).await?;
    let mut line = format!(
        "RestartDataPlane(Implausible) after {}, channel closed after {}",
        ms(reported),
        ms(closed)
    );
    if let Some(get) = pending_get {
        let a = get.await??;
        check_config_only(&a, &[peer]).context("the get the lie answered")?;
        line.push_str(&format!(", the pending get answered in {}", ms(a.took)));
    }
    // Without a data plane: from the configuration, at once.
    let a = keyd.uapi_ok("get=1\n\n".into(), RESPONSIVE).await?;
    check_config_only(&a, &[peer]).context("get without a data plane")?;
    line.push_str(&format!(", get without a data plane {}", ms(a.took)));
    Ok(line)
}

/// (1) Statistics that cannot be true: a last handshake at `u64::MAX` seconds (the old keyd
/// aborted adding it to the epoch), nanoseconds past a second, a time far in the future,
/// and answers to no request or to one already finished. Each time keyd stays up, reports
/// `Implausible`, closes the channel, answers `get` from its configuration without the
/// lie, and configures the next data plane completely.
#[test]
fn impossible_statistics_restart_the_data_plane_not_keyd() -> Result<()> {
    let env = setup!("hda");
    with_one_peer(&env, StatsPolicy::Forward, async |keyd, mut datad, one| {
        let (peer_key, public) = (one.peer, Some(one.public));
        honest_get(keyd, &mut datad, peer_key)
            .await
            .context("an honest answer before any lie")?;
        let lies = [
            (
                "last handshake at u64::MAX s",
                Lie::HandshakeTime(u64::MAX, 0),
            ),
            (
                "last handshake with 1e9 ns",
                Lie::HandshakeTime(unix_now(), 1_000_000_000),
            ),
            (
                "last handshake in the year 3000",
                Lie::HandshakeTime(32_503_680_000, 0),
            ),
            ("Stats for a request never sent", Lie::Unrequested),
            ("Stats for a finished request", Lie::Finished),
        ];
        let mut failures = Vec::new();
        for (name, lie) in lies {
            match tell(keyd, &mut datad, peer_key, lie).await {
                Ok(line) => println!("{name}: {line}"),
                Err(e) => failures.push(format!("{name}: {e:#}")),
            }
            if let Err(e) = keyd.ensure_alive() {
                failures.push(format!("after {name}: {e:#}"));
                break;
            }
            let restarted = Instant::now();
            match new_data_plane(keyd, StatsPolicy::Forward, public, 1).await {
                Ok(d) => datad = d,
                Err(e) => {
                    failures.push(format!("new data plane after {name}: {e:#}"));
                    break;
                }
            }
            // The new data plane is served as the first was.
            match honest_get(keyd, &mut datad, peer_key).await {
                Ok(_) => println!(
                    "  new data plane configured and answering after {}",
                    ms(restarted.elapsed())
                ),
                Err(e) => failures.push(format!("honest get after {name}: {e:#}")),
            }
        }
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        keyd.ensure_alive()
    })
}

/// Sends `chunks` statistics chunks of 256 peers for `request` (`done` only on the last),
/// stopping when keyd closes the channel; returns how many went out.
async fn flood_chunks(
    datad: &FakeDatad,
    request: u32,
    chunks: usize,
    mut peers: impl FnMut(usize) -> Vec<[u8; 32]>,
) -> Result<usize> {
    for i in 0..chunks {
        let msg = DatadToKeyd::Stats {
            request,
            peers: peers(i)
                .into_iter()
                .map(|k| PeerStats {
                    public_key: PublicKey(k),
                    endpoint: Some(SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
                        51820,
                    )),
                    last_handshake: None,
                    rx_bytes: u64::MAX,
                    tx_bytes: u64::MAX,
                })
                .collect(),
            done: i + 1 == chunks,
        };
        let sent = tokio::time::timeout(Duration::from_secs(5), datad.send(&msg))
            .await
            .context("keyd stopped reading the statistics chunks (5 s)")??;
        if !sent {
            return Ok(i);
        }
    }
    Ok(chunks)
}

/// (2) One pending `get`, and 640 chunks of 256 peers each for it (the old keyd kept
/// every chunk and grew from 4 MB to over 100 MB): keyd's peak resident memory stays
/// below 32 MiB and it reports `Implausible`. Twice: chunks of made-up peers, then chunks
/// repeating the configured peers (each chunk alone plausible).
#[test]
fn a_flood_of_statistics_chunks_keeps_keyd_small() -> Result<()> {
    const CHUNKS: usize = 640;
    let env = setup!("hdb");
    with_keyd(&env, async |keyd, ch| {
        let mut rng = Rng::new(0x5eed_0002);
        let configured = made_up_peers(&mut rng, STATS_PER_MESSAGE);
        let keys_only: Vec<[u8; 32]> = configured.iter().map(|(k, _)| *k).collect();
        let mut datad = FakeDatad::spawn(ch, StatsPolicy::Forward);
        keyd.uapi_ok(set_request(None, &configured), UAPI_TIMEOUT)
            .await?;
        datad
            .wait_configured(None, configured.len(), UAPI_TIMEOUT)
            .await?;
        let (rss0, hwm0) = keyd.memory_kib()?;
        println!("keyd before: VmRSS {rss0} KiB, VmHWM {hwm0} KiB");
        let mut failures = Vec::new();
        for phase in ["made-up peers", "the configured peers, repeated"] {
            let get = keyd.uapi_background("get=1\n\n".into(), UAPI_TIMEOUT);
            let request = datad.next_stats_request(UAPI_TIMEOUT).await?;
            let started = Instant::now();
            let mut chunk_rng = Rng::new(0x5eed_0003);
            let repeat = phase != "made-up peers";
            let sent = flood_chunks(&datad, request, CHUNKS, |_| {
                if repeat {
                    keys_only.clone()
                } else {
                    (0..STATS_PER_MESSAGE).map(|_| chunk_rng.key()).collect()
                }
            })
            .await?;
            let flood_took = started.elapsed();
            let verdict = expect_restart(
                keyd,
                &mut datad,
                Misbehaviour::Implausible,
                started,
                REPORT_BOUND,
            )
            .await;
            let (rss, hwm) = keyd.memory_kib()?;
            let answer = get.await?;
            println!(
                "{phase}: {sent} of {CHUNKS} chunks accepted in {}; {}; get: {}; keyd \
                 VmRSS {rss} KiB, VmHWM {hwm} KiB",
                ms(flood_took),
                match &verdict {
                    Ok((r, c)) => format!(
                        "RestartDataPlane(Implausible) after {}, closed after {}",
                        ms(*r),
                        ms(*c)
                    ),
                    Err(e) => format!("{e:#}"),
                },
                match &answer {
                    Ok(a) => format!("errno {:?} in {}", a.errno, ms(a.took)),
                    Err(e) => format!("{e:#}"),
                }
            );
            if let Err(e) = verdict {
                failures.push(format!("{phase}: {e:#}"));
            }
            match answer {
                Ok(a) => {
                    if let Err(e) = check_config_only(&a, &keys_only) {
                        failures.push(format!("{phase}: the pending get: {e:#}"));
                    }
                }
                Err(e) => failures.push(format!("{phase}: the pending get: {e:#}")),
            }
            if hwm >= RSS_BOUND_KIB {
                failures.push(format!(
                    "{phase}: keyd's peak resident memory is {hwm} KiB (before the flood \
                     {hwm0} KiB), bound {RSS_BOUND_KIB} KiB"
                ));
            }
            keyd.ensure_alive()?;
            datad = new_data_plane(keyd, StatsPolicy::Forward, None, configured.len()).await?;
        }
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        keyd.ensure_alive()
    })
}

/// (3) A data plane that never answers a statistics request, and one that sends a first
/// chunk and never the rest: `get` answers anyway within about a second (configuration,
/// zero counters) and keyd reports `StatsTimeout`.
#[test]
fn unanswered_statistics_time_out_and_get_answers_anyway() -> Result<()> {
    let env = setup!("hdc");
    with_one_peer(&env, StatsPolicy::Forward, async |keyd, mut datad, one| {
        let (peer_key, public) = (one.peer, Some(one.public));
        let mut failures = Vec::new();
        for phase in ["no answer", "a first chunk, then nothing"] {
            let started = Instant::now();
            let get = keyd.uapi_background("get=1\n\n".into(), UAPI_TIMEOUT);
            let request = datad.next_stats_request(UAPI_TIMEOUT).await?;
            if phase != "no answer" {
                datad
                    .send(&DatadToKeyd::Stats {
                        request,
                        peers: vec![PeerStats {
                            public_key: PublicKey(peer_key),
                            endpoint: None,
                            last_handshake: None,
                            rx_bytes: 99,
                            tx_bytes: 99,
                        }],
                        done: false,
                    })
                    .await?;
            }
            let answer = get.await?;
            let verdict = expect_restart(
                keyd,
                &mut datad,
                Misbehaviour::StatsTimeout,
                started,
                REPORT_BOUND,
            )
            .await;
            println!(
                "{phase}: get {}; {}",
                match &answer {
                    Ok(a) => format!("errno {:?} after {}", a.errno, ms(a.took)),
                    Err(e) => format!("{e:#}"),
                },
                match &verdict {
                    Ok((r, c)) => format!(
                        "RestartDataPlane(StatsTimeout) after {}, closed after {}",
                        ms(*r),
                        ms(*c)
                    ),
                    Err(e) => format!("{e:#}"),
                }
            );
            match answer {
                Ok(a) => {
                    if a.took > STATS_ANSWER_BOUND {
                        failures.push(format!(
                            "{phase}: get took {} (bound {})",
                            ms(a.took),
                            ms(STATS_ANSWER_BOUND)
                        ));
                    }
                    if let Err(e) = check_config_only(&a, &[peer_key]) {
                        failures.push(format!("{phase}: {e:#}"));
                    }
                }
                Err(e) => failures.push(format!("{phase}: get: {e:#}")),
            }
            if let Err(e) = verdict {
                failures.push(format!("{phase}: {e:#}"));
            }
            keyd.ensure_alive()?;
            datad = new_data_plane(keyd, StatsPolicy::Forward, public, 1).await?;
        }
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        keyd.ensure_alive()
    })
}

/// (4) A data plane that stops reading while keyd has 2,000 peer updates for it: UAPI
/// `set`s still answer within about a second, keyd reports `Stalled` (2 s without
/// progress), closes the channel, and serves `get` from its configuration. Then a new data
/// plane that stalls at once on the configuration keyd re-sends to it, with a `get` right
/// away: that answers within about a second too (reported as `Stalled` or `StatsTimeout`,
/// whichever keyd notices first; both are true).
#[test]
fn a_stalled_data_plane_never_blocks_uapi() -> Result<()> {
    const PEERS: usize = 2000;
    let env = setup!("hdd");
    with_keyd(&env, async |keyd, ch| {
        let mut rng = Rng::new(0x5eed_0004);
        // No private key: keyd then does no Curve25519 work per peer, so the time a
        // `set` takes is keyd's serving, not the debug build's arithmetic.
        let peers = made_up_peers(&mut rng, PEERS);
        let mut keys_only: Vec<[u8; 32]> = peers.iter().map(|(k, _)| *k).collect();
        wg_e2e::fake_monitor::greet(&ch, UAPI_TIMEOUT).await?;
        // From here on nobody reads `ch`.
        let stalled_at = Instant::now();
        let big = keyd.uapi(set_request(None, &peers), UAPI_TIMEOUT).await;
        let extra = (rng.key(), "10.250.0.1/32".to_owned());
        let small = keyd
            .uapi(
                set_request(None, std::slice::from_ref(&extra)),
                UAPI_TIMEOUT,
            )
            .await;
        let mut failures = Vec::new();
        for (what, a) in [
            ("set of 2,000 peers", &big),
            ("set of one more peer", &small),
        ] {
            match a {
                Ok(a) => {
                    println!("stalled: {what}: errno {:?} in {}", a.errno, ms(a.took));
                    if a.errno != Some(0) || a.took > RESPONSIVE {
                        failures.push(format!(
                            "{what} while the data plane stalls: errno {:?} after {} \
                             (bound {})",
                            a.errno,
                            ms(a.took),
                            ms(RESPONSIVE)
                        ));
                    }
                }
                Err(e) => failures.push(format!("{what} while the data plane stalls: {e:#}")),
            }
        }
        keys_only.push(extra.0);
        // No get yet: its statistics request would time out first (StatsTimeout, 1 s).
        match keyd.next_restart(Duration::from_secs(6)).await {
            Ok((reason, at)) => {
                println!(
                    "stalled: RestartDataPlane({reason:?}) {} after the data plane stopped \
                     reading",
                    ms(at.saturating_duration_since(stalled_at))
                );
                if reason != Misbehaviour::Stalled {
                    failures.push(format!("stalled data plane reported as {reason:?}"));
                }
            }
            Err(e) => failures.push(format!("stalled data plane: {e:#}")),
        }
        let (rss, hwm) = keyd.memory_kib()?;
        println!("stalled: keyd VmRSS {rss} KiB, VmHWM {hwm} KiB");
        // Reading now drains what keyd queued, then finds the channel closed.
        let mut drained = FakeDatad::spawn(ch, StatsPolicy::Honest);
        match drained.wait_closed(REPORT_BOUND).await {
            Ok(_) => println!(
                "stalled: channel closed; {} messages were queued in the socket",
                drained.log().total()
            ),
            Err(e) => failures.push(format!("stalled data plane's channel: {e:#}")),
        }
        keyd.ensure_alive()?;
        let a = keyd.uapi_ok("get=1\n\n".into(), RESPONSIVE).await?;
        check_config_only(&a, &keys_only).context("get after the stall")?;
        println!(
            "stalled: get without a data plane: {} peers in {}",
            keys_only.len(),
            ms(a.took)
        );

        // A new data plane that stalls on the configuration keyd re-sends to it.
        let ch = keyd.restart_data_plane().await?;
        wg_e2e::fake_monitor::greet(&ch, UAPI_TIMEOUT).await?;
        let get = keyd.uapi("get=1\n\n".into(), UAPI_TIMEOUT).await;
        match &get {
            Ok(a) => {
                println!(
                    "re-stalled: get errno {:?} in {} with {} peers",
                    a.errno,
                    ms(a.took),
                    a.values("public_key").len()
                );
                if a.took > RESPONSIVE {
                    failures.push(format!(
                        "get on a data plane stalled by the re-sent configuration took {}",
                        ms(a.took)
                    ));
                }
                if let Err(e) = check_config_only(a, &keys_only) {
                    failures.push(format!("re-stalled get: {e:#}"));
                }
            }
            Err(e) => failures.push(format!("get on a re-stalled data plane: {e:#}")),
        }
        match keyd.next_restart(Duration::from_secs(6)).await {
            Ok((reason, _)) => {
                println!("re-stalled: RestartDataPlane({reason:?})");
                if !matches!(reason, Misbehaviour::Stalled | Misbehaviour::StatsTimeout) {
                    failures.push(format!("re-stalled data plane reported as {reason:?}"));
                }
            }
            Err(e) => failures.push(format!("re-stalled data plane: {e:#}")),
        }
        drop(ch);
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        keyd.ensure_alive()
    })
}

/// What the flood sent.
#[derive(Debug, Default)]
struct Flooded {
    initiations: usize,
    responses: usize,
    cookie_replies: usize,
    retired: usize,
    want_configured: usize,
    want_unknown: usize,
    /// keyd closed the channel during the flood.
    closed: bool,
}

impl Flooded {
    fn total(&self) -> usize {
        self.initiations
            + self.responses
            + self.cookie_replies
            + self.retired
            + self.want_configured
            + self.want_unknown
    }
}

/// Floods keyd until `until` with handshake messages that pass MAC1 for `keyd_public`
/// (contents garbage, so each costs keyd Curve25519 work before it fails), cookie replies,
/// retired indices and `WantHandshake` for `peer` and for unknown peers.
async fn flood(
    datad: &FakeDatad,
    keyd_public: [u8; 32],
    peer: [u8; 32],
    until: Instant,
) -> Result<Flooded> {
    let mut rng = Rng::new(0x5eed_0005);
    let mut signer = wg_cookie::MacSigner::new(&PublicKey(keyd_public));
    let mut f = Flooded::default();
    let mut i = 0usize;
    while Instant::now() < until {
        // This runtime also runs the data plane's reader and the test: take turns, and let
        // the reader's statistics answers go first.
        tokio::task::yield_now().await;
        if datad.answering() {
            continue;
        }
        let source = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8)),
            1024 + (i % 60000) as u16,
        );
        let msg = match i % 10 {
            0..=5 => {
                let mut m = vec![0u8; INITIATION_LEN];
                rng.fill(&mut m[4..]);
                m[0] = 1;
                signer.sign(&mut m, std::time::Instant::now())?;
                f.initiations += 1;
                DatadToKeyd::Handshake { message: m, source }
            }
            6 => {
                let mut m = vec![0u8; RESPONSE_LEN];
                rng.fill(&mut m[4..]);
                m[0] = 2;
                signer.sign(&mut m, std::time::Instant::now())?;
                f.responses += 1;
                DatadToKeyd::Handshake { message: m, source }
            }
            7 => {
                let mut m = vec![0u8; COOKIE_REPLY_LEN];
                rng.fill(&mut m[4..]);
                m[0] = 3;
                f.cookie_replies += 1;
                DatadToKeyd::CookieReply { message: m }
            }
            8 => {
                f.retired += 1;
                DatadToKeyd::RetiredIndices {
                    indices: (0..256).map(|_| rng.next_u32()).collect(),
                }
            }
            _ if i % 50 == 9 => {
                f.want_unknown += 1;
                DatadToKeyd::WantHandshake {
                    public_key: PublicKey(rng.key()),
                    retry: false,
                }
            }
            _ => {
                f.want_configured += 1;
                DatadToKeyd::WantHandshake {
                    public_key: PublicKey(peer),
                    retry: i % 20 == 19,
                }
            }
        };
        if !datad.send(&msg).await? {
            f.closed = true;
            break;
        }
        i += 1;
    }
    Ok(f)
}

/// (5) A flood of handshake messages with a valid MAC1, `WantHandshake` for a configured
/// peer, cookie replies and retired indices, for 4 s (less than `REKEY_TIMEOUT`), while a
/// UAPI client asks `get` every 200 ms: every `get` answers within a second, the peer gets
/// at least one and at most two initiations, and nothing is restarted (floods are
/// rate-limited, not misbehaviour).
#[test]
fn a_handshake_flood_is_rate_limited_and_uapi_stays_fast() -> Result<()> {
    const WINDOW: Duration = Duration::from_secs(4);
    let env = setup!("hde");
    with_one_peer(&env, StatsPolicy::Honest, async |keyd, datad, one| {
        let (peer_key, keyd_public) = (one.peer, one.public);
        let idle = keyd.uapi_ok("get=1\n\n".into(), UAPI_TIMEOUT).await?;
        println!("idle get: {}", ms(idle.took));

        let started = Instant::now();
        let until = started + WINDOW;
        let mut gets = Vec::new();
        let probe = async {
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            while Instant::now() < until {
                match keyd.uapi("get=1\n\n".into(), Duration::from_secs(3)).await {
                    Ok(a) => {
                        if a.errno != Some(0) {
                            failures.push(format!("get during the flood: errno {:?}", a.errno));
                        }
                        latencies.push(a.took);
                        gets.push((a.started, a.took));
                    }
                    Err(e) => failures.push(format!("get during the flood: {e:#}")),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (latencies, failures)
        };
        let (flooded, (mut latencies, mut failures)) =
            tokio::join!(flood(&datad, keyd_public, peer_key, until), probe);
        let flooded = flooded?;
        let ended = Instant::now();
        let log = datad.log();
        let initiations = log.handshakes_for(&peer_key, started);
        let in_window = initiations.iter().filter(|t| **t <= ended).count();
        latencies.sort();
        let max = latencies.last().copied().unwrap_or_default();
        let median = latencies
            .get(latencies.len() / 2)
            .copied()
            .unwrap_or_default();
        println!(
            "flood: {} messages in {} ({:.0}/s): {flooded:?}",
            flooded.total(),
            ms(ended - started),
            flooded.total() as f64 / (ended - started).as_secs_f64()
        );
        println!(
            "flood: {} gets, median {}, max {}; SendHandshake for the peer: {in_window}; \
             keyd sent {:?}",
            latencies.len(),
            ms(median),
            ms(max),
            log.kinds
        );
        // Where each get's time went: until keyd asked the data plane, until the
        // answer was sent, until keyd had read through the flood to it and answered.
        for (start, took) in &gets {
            let asked = log
                .stats_requests
                .iter()
                .map(|(t, _)| *t)
                .find(|t| *t >= *start && *t <= *start + *took);
            let answered = asked.and_then(|a| log.stats_answered.iter().find(|t| **t >= a));
            if let (Some(asked), Some(answered)) = (asked, answered) {
                println!(
                    "  get of {}: StatsRequest after {}, answered {} later, get done {} \
                     after that",
                    ms(*took),
                    ms(asked - *start),
                    ms(answered.saturating_duration_since(asked)),
                    ms((*start + *took).saturating_duration_since(*answered))
                );
            }
        }
        if latencies.is_empty() {
            failures.push("no get completed during the flood".into());
        }
        if max >= Duration::from_secs(1) {
            failures.push(format!(
                "a get during the flood took {} (latencies {latencies:?})",
                ms(max)
            ));
        }
        if !(1..=2).contains(&in_window) {
            failures.push(format!(
                "{in_window} initiations for the configured peer within {} of \
                 WantHandshake flood (want 1 or 2: at most one per REKEY_TIMEOUT)",
                ms(ended - started)
            ));
        }
        if flooded.closed || datad.is_closed() {
            failures.push("keyd closed the data-plane channel during the flood".into());
        }
        let restarts = keyd.restarts_so_far();
        if !restarts.is_empty() {
            failures.push(format!(
                "keyd asked for data-plane restarts during the flood: {restarts:?}"
            ));
        }
        keyd.ensure_alive()?;
        // Still the same data plane, still served.
        let after = keyd.uapi_ok("get=1\n\n".into(), UAPI_TIMEOUT).await?;
        println!("get after the flood: {}", ms(after.took));
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    })
}

/// (6) The keyd these tests attack is the production one, sandboxed: seccomp filter mode,
/// `no_new_privs`, no capabilities, an unprivileged user without supplementary groups, the
/// empty root, and only AF_UNIX sockets.
#[test]
fn the_keyd_under_attack_is_sandboxed() -> Result<()> {
    let env = setup!("hdf");
    with_keyd(&env, async |keyd, ch| {
        let datad = FakeDatad::spawn(ch, StatsPolicy::Honest);
        datad.wait_greeted(Duration::from_secs(10)).await?;
        let st = Status::read(keyd.pid)?;
        let mut bad = Vec::new();
        for (field, want) in [("Seccomp", "2"), ("NoNewPrivs", "1"), ("Groups", "")] {
            let v = st.get(field)?;
            if v != want {
                bad.push(format!("{field} {v:?} (want {want:?})"));
            }
        }
        for set in CAP_SETS {
            let v = st.cap(set)?;
            if v != 0 {
                bad.push(format!("{set} {v:016x}"));
            }
        }
        let user = keyd_user();
        let uid = nix::unistd::User::from_name(user)?
            .with_context(|| format!("no user {user}"))?
            .uid
            .as_raw();
        for key in ["Uid", "Gid"] {
            let ids = st.ids(key)?;
            if ids.contains(&0) {
                bad.push(format!("{key} {ids:?} includes root"));
            }
        }
        if st.ids("Uid")? != [uid; 4] {
            bad.push(format!("Uid {:?}, want {user} ({uid})", st.ids("Uid")?));
        }
        match root_dir(keyd.pid) {
            Ok(root) if root.as_os_str() == EMPTY_ROOT => {}
            other => bad.push(format!("root {other:?}, want {EMPTY_ROOT}")),
        }
        let fds = socket_inodes(keyd.pid)?;
        let unix = unix_sockets(keyd.pid)?;
        let inet = inet_sockets(keyd.pid)?;
        for inode in &fds {
            if inet.iter().any(|s| s.inode == *inode) {
                bad.push(format!("an IP socket (inode {inode})"));
            } else if !unix.iter().any(|s| s.inode == *inode) {
                bad.push(format!("socket inode {inode} is not AF_UNIX"));
            }
        }
        println!(
            "keyd pid {} as {user}: {}; root {:?}; {} sockets, all AF_UNIX",
            keyd.pid,
            st.summary(),
            root_dir(keyd.pid).ok(),
            fds.len()
        );
        ensure!(
            bad.is_empty(),
            "keyd (pid {}) is not sandboxed: {}",
            keyd.pid,
            bad.join(", ")
        );
        let a = keyd.uapi_ok("get=1\n\n".into(), UAPI_TIMEOUT).await?;
        println!("get: {}", ms(a.took));
        keyd.ensure_alive()
    })
}
