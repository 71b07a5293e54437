//! Handshakes per second: many initiators against one responder.
//!
//! The parent (`cargo xtask bench`, root namespace) makes `peers` key pairs, configures
//! the responder in namespace B with their public keys, and re-executes its own binary in
//! namespace A as the hidden `hs-flood` subcommand, which:
//!
//! 1. binds one UDP socket per initiator, each on its own source address (A has a `local`
//!    route for [`SOURCE_NET`], B routes it back over the veth), so per-source-address
//!    rate limits under load (20/s with a burst of 5 in wireguard-go, the kernel and
//!    wireguard-rs) limit each initiator, not the whole flood;
//! 2. builds up to `initiations` valid Noise_IKpsk2 initiations (round robin over the
//!    initiators, fresh ephemeral keys and TAI64N timestamps) before the clock starts;
//! 3. sends them with at most `window` unanswered at a time, as a real initiator would:
//!    a cookie reply (type 3) is decrypted (`wg-cookie`: XChaCha20-Poly1305 keyed by
//!    `HASH("cookie--" || responder public key)`, AAD = the MAC1 of the initiation it
//!    answers) and the initiation is sent again with MAC2 = `MAC(cookie, msg[..mac2])`;
//!    an initiation with no answer within `timeout_ms` counts as lost;
//! 4. stops when every initiation is answered or lost, or after `seconds`;
//! 5. then (off the clock) checks every response (type 2) cryptographically
//!    (`Peer::consume_response`) and prints a JSON summary: valid responses per second of
//!    wall time between the first send and the last response.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::json;
use wg_cookie::MacSigner;
use wg_handshake::{LocalIdentity, Peer, Tai64N};
use wg_wire::{
    COOKIE_REPLY_LEN, CookieReply, MESSAGE_COOKIE_REPLY, MESSAGE_RESPONSE, PresharedKey, PublicKey,
    RESPONSE_LEN, message_type,
};
use zeroize::Zeroizing;

/// The initiators' source addresses: `10.205.0.1` upwards (A: `local` route; B: route via
/// A's veth address).
pub(crate) const SOURCE_NET: &str = "10.205.0.0/16";
/// First source address (the network address + 1 is the first initiator).
const SOURCE_BASE: Ipv4Addr = Ipv4Addr::new(10, 205, 0, 0);
/// At most this many initiators (the /16 minus network and broadcast).
pub(crate) const MAX_PEERS: usize = 65_000;
/// A new cookie reply for the same initiation is followed at most this many times.
const MAX_COOKIE_RESENDS: u8 = 3;

/// Hidden `cargo xtask hs-flood` arguments (run by `cargo xtask bench` in namespace A).
#[derive(clap::Args, Debug)]
pub(crate) struct FloodArgs {
    /// The responder's public key (base64).
    #[arg(long)]
    responder: String,
    /// The responder's address and UDP port.
    #[arg(long)]
    endpoint: SocketAddr,
    /// File of base64 private keys, one initiator per line.
    #[arg(long)]
    keys: PathBuf,
    /// Initiations to send at most (cookie-triggered resends not included).
    #[arg(long, default_value_t = 2000)]
    initiations: usize,
    /// Time limit of the flood, seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unanswered initiations in flight at most.
    #[arg(long, default_value_t = 128)]
    window: usize,
    /// An initiation unanswered after this long is counted as lost.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (as `wg` prints keys).
pub(crate) fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes a base64 WireGuard key (44 characters, 32 bytes).
pub(crate) fn b64_decode_key(s: &str) -> Result<[u8; 32]> {
    let s = s.trim();
    if s.len() != 44 || !s.ends_with('=') {
        bail!("not a base64 WireGuard key (44 characters ending in '='): {s:?}");
    }
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = Vec::with_capacity(33);
    for c in s.trim_end_matches('=').bytes() {
        let v = B64
            .iter()
            .position(|&x| x == c)
            .with_context(|| format!("invalid base64 character {:?} in key", char::from(c)))?;
        bits = (bits << 6) | u32::try_from(v).unwrap_or(0);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push(u8::try_from((bits >> nbits) & 0xff).unwrap_or(0));
        }
    }
    out.try_into()
        .map_err(|v: Vec<u8>| anyhow::anyhow!("key decodes to {} bytes, not 32", v.len()))
}

/// 32 random bytes.
pub(crate) fn random_key(rng: &mut StdRng) -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut k[..]);
    k
}

/// The public key of a private key.
pub(crate) fn public_of(private: &Zeroizing<[u8; 32]>) -> [u8; 32] {
    *LocalIdentity::from_private_bytes(private.clone())
        .public_key()
        .as_bytes()
}

/// Source address of initiator `i` (0-based).
pub(crate) fn source_addr(i: usize) -> Result<Ipv4Addr> {
    if i >= MAX_PEERS {
        bail!("at most {MAX_PEERS} initiators");
    }
    let n = u32::from(SOURCE_BASE) + 1 + u32::try_from(i)?;
    Ok(Ipv4Addr::from(n))
}

/// Where one initiation stands.
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    NotSent,
    Outstanding { since: Instant, resends: u8 },
    Answered,
    Lost,
}

/// One pre-built initiation.
struct Init {
    peer: usize,
    msg: [u8; wg_wire::INITIATION_LEN],
    noise: Peer,
    state: State,
    response: Option<[u8; RESPONSE_LEN]>,
}

/// Counters of a flood.
#[derive(Debug, Default)]
struct Counts {
    sent: u64,
    cookie_resends: u64,
    cookie_replies: u64,
    bad_cookie_replies: u64,
    responses: u64,
    late_responses: u64,
    unknown: u64,
    lost: u64,
    /// Lost although sent again with MAC2 after a cookie reply.
    lost_after_cookie: u64,
    send_errors: u64,
}

/// Runs the hidden subcommand; prints the JSON summary on stdout.
pub(crate) fn run(args: &FloodArgs) -> Result<()> {
    let responder = PublicKey(b64_decode_key(&args.responder).context("--responder")?);
    let text = fs::read_to_string(&args.keys)
        .with_context(|| format!("could not read {}", args.keys.display()))?;
    let identities: Vec<LocalIdentity> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            Ok(LocalIdentity::from_private_bytes(Zeroizing::new(
                b64_decode_key(l)?,
            )))
        })
        .collect::<Result<_>>()?;
    let n = identities.len();
    if n == 0 || n > MAX_PEERS {
        bail!(
            "{} has {n} keys; 1..={MAX_PEERS} expected",
            args.keys.display()
        );
    }
    if args.window == 0 || args.initiations == 0 {
        bail!("--window and --initiations must be at least 1");
    }
    let timeout = Duration::from_millis(args.timeout_ms);

    // Sockets, one per initiator, each on its own address.
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create")?;
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        let addr = SocketAddrV4::new(source_addr(i)?, 0);
        let s = UdpSocket::bind(addr).with_context(|| {
            format!(
                "could not bind a UDP socket to {addr} (is there a `local {SOURCE_NET}` route \
                 in this namespace?)"
            )
        })?;
        s.set_nonblocking(true)?;
        epoll
            .add(s.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
            .context("epoll_ctl")?;
        sockets.push(s);
    }

    // Build every initiation before the clock starts.
    let mut rng: StdRng = rand::make_rng();
    let mut signers: Vec<MacSigner> = (0..n).map(|_| MacSigner::new(&responder)).collect();
    let mut by_index: HashMap<u32, usize> = HashMap::with_capacity(args.initiations);
    let mut inits = Vec::with_capacity(args.initiations);
    let build_start = Instant::now();
    for j in 0..args.initiations {
        let p = j % n;
        let mut index = rng.next_u32();
        while by_index.contains_key(&index) {
            index = rng.next_u32();
        }
        by_index.insert(index, j);
        let mut noise = Peer::new(&identities[p], responder, PresharedKey::zero());
        let msg = noise
            .create_initiation(
                &identities[p],
                index,
                Tai64N::from_system_time(SystemTime::now()),
                &mut signers[p],
                Instant::now(),
                &mut rng,
            )
            .context("building an initiation")?;
        inits.push(Init {
            peer: p,
            msg,
            noise,
            state: State::NotSent,
            response: None,
        });
    }
    let build_s = build_start.elapsed().as_secs_f64();

    let mut c = Counts::default();
    let mut next = 0usize;
    let mut outstanding = 0usize;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut last_response: Option<Instant> = None;
    let mut events = vec![EpollEvent::empty(); 256];
    let mut buf = [0u8; 2048];

    let send = |j: usize, inits: &mut [Init], signers: &mut [MacSigner], c: &mut Counts| {
        let init = &mut inits[j];
        let mut msg = init.msg;
        // Re-sign: MAC2 with the cookie this initiator holds, if any (MAC1 is unchanged).
        let now = Instant::now();
        if signers[init.peer].sign(&mut msg, now).is_err() {
            c.send_errors += 1;
            return false;
        }
        match sockets[init.peer].send_to(&msg, args.endpoint) {
            Ok(_) => true,
            Err(_) => {
                c.send_errors += 1;
                false
            }
        }
    };

    while Instant::now() < deadline && (next < inits.len() || outstanding > 0) {
        while outstanding < args.window && next < inits.len() {
            let j = next;
            next += 1;
            c.sent += 1;
            if send(j, &mut inits, &mut signers, &mut c) {
                inits[j].state = State::Outstanding {
                    since: Instant::now(),
                    resends: 0,
                };
                outstanding += 1;
            } else {
                inits[j].state = State::Lost;
                c.lost += 1;
            }
        }
        let ready = epoll
            .wait(&mut events, EpollTimeout::from(10u16))
            .or_else(|e| {
                if e == nix::errno::Errno::EINTR {
                    Ok(0)
                } else {
                    Err(e)
                }
            })
            .context("epoll_wait")?;
        for ev in &events[..ready] {
            let Some(sock) = usize::try_from(ev.data()).ok().and_then(|i| sockets.get(i)) else {
                continue;
            };
            loop {
                let len = match sock.recv_from(&mut buf) {
                    Ok((len, _)) => len,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    // ICMP errors (port unreachable) surface here: nothing to read.
                    Err(_) => break,
                };
                let now = Instant::now();
                let dgram = &buf[..len];
                match message_type(dgram) {
                    Ok(MESSAGE_RESPONSE) if len == RESPONSE_LEN => {
                        let Ok(resp) = wg_wire::Response::parse(dgram) else {
                            c.unknown += 1;
                            continue;
                        };
                        let Some(&j) = by_index.get(&resp.receiver_index) else {
                            c.unknown += 1;
                            continue;
                        };
                        let init = &mut inits[j];
                        match init.state {
                            State::Outstanding { .. } => {
                                outstanding -= 1;
                                c.responses += 1;
                            }
                            State::Lost => {
                                c.late_responses += 1;
                                c.responses += 1;
                            }
                            _ => {
                                c.unknown += 1;
                                continue;
                            }
                        }
                        init.state = State::Answered;
                        let mut r = [0u8; RESPONSE_LEN];
                        r.copy_from_slice(dgram);
                        init.response = Some(r);
                        last_response = Some(now);
                    }
                    Ok(MESSAGE_COOKIE_REPLY) if len == COOKIE_REPLY_LEN => {
                        c.cookie_replies += 1;
                        let Ok(reply) = CookieReply::parse(dgram) else {
                            c.bad_cookie_replies += 1;
                            continue;
                        };
                        let Some(&j) = by_index.get(&reply.receiver_index) else {
                            c.bad_cookie_replies += 1;
                            continue;
                        };
                        let State::Outstanding { resends, .. } = inits[j].state else {
                            continue;
                        };
                        if signers[inits[j].peer]
                            .consume_cookie_reply(&reply, now)
                            .is_err()
                        {
                            c.bad_cookie_replies += 1;
                            continue;
                        }
                        if resends >= MAX_COOKIE_RESENDS {
                            continue;
                        }
                        c.cookie_resends += 1;
                        if send(j, &mut inits, &mut signers, &mut c) {
                            inits[j].state = State::Outstanding {
                                since: Instant::now(),
                                resends: resends + 1,
                            };
                        }
                    }
                    _ => c.unknown += 1,
                }
            }
        }
        let now = Instant::now();
        for init in inits.iter_mut().take(next) {
            if let State::Outstanding { since, resends } = init.state
                && now.saturating_duration_since(since) >= timeout
            {
                init.state = State::Lost;
                outstanding -= 1;
                c.lost += 1;
                if resends > 0 {
                    c.lost_after_cookie += 1;
                }
            }
        }
    }
    let stopped = start.elapsed().as_secs_f64();
    let still_outstanding = inits
        .iter()
        .filter(|i| matches!(i.state, State::Outstanding { .. }))
        .count();

    // Off the clock: which responses complete a handshake.
    let mut valid = 0u64;
    for init in &mut inits {
        if let Some(r) = init.response
            && init
                .noise
                .consume_response(&identities[init.peer], &r)
                .is_ok()
        {
            valid += 1;
        }
    }
    let span = last_response.map(|t| t.saturating_duration_since(start).as_secs_f64());
    #[allow(clippy::cast_precision_loss)]
    let per_s = span.filter(|s| *s > 0.0).map(|s| valid as f64 / s);
    let out = json!({
        "initiators": n,
        "window": args.window,
        "initiations_built": inits.len(),
        "build_s": build_s,
        "initiations_sent": c.sent,
        "cookie_replies": c.cookie_replies,
        "bad_cookie_replies": c.bad_cookie_replies,
        "resent_after_cookie": c.cookie_resends,
        "responses": c.responses,
        "late_responses": c.late_responses,
        "valid_responses": valid,
        "lost": c.lost,
        "lost_after_cookie": c.lost_after_cookie,
        "unanswered_at_stop": still_outstanding,
        "send_errors": c.send_errors,
        "other_datagrams": c.unknown,
        "first_send_to_last_response_s": span,
        "stopped_after_s": stopped,
        "handshakes_per_s": per_s,
    });
    println!("{out}");
    Ok(())
}

/// What the parent needs to drive a flood: the initiators' keys, written for the child,
/// and the responder's configuration lines.
pub(crate) struct FloodSetup {
    /// base64 private key of the responder.
    pub(crate) responder_private: String,
    /// base64 public key of the responder.
    pub(crate) responder_public: String,
    /// base64 public keys of the initiators.
    pub(crate) initiator_publics: Vec<String>,
    /// The initiators' private keys (base64), one per line, for the keys file. Throwaway
    /// keys of one benchmark run, so a plain `String`.
    pub(crate) keys_file_text: String,
}

/// Makes `n` initiator key pairs and a responder key pair.
pub(crate) fn make_setup(n: usize, rng: &mut StdRng) -> FloodSetup {
    let responder = random_key(rng);
    let mut keys = String::new();
    let mut publics = Vec::with_capacity(n);
    for _ in 0..n {
        let k = random_key(rng);
        keys.push_str(&b64_encode(&k[..]));
        keys.push('\n');
        publics.push(b64_encode(&public_of(&k)));
    }
    FloodSetup {
        responder_private: b64_encode(&responder[..]),
        responder_public: b64_encode(&public_of(&responder)),
        initiator_publics: publics,
        keys_file_text: keys,
    }
}

/// The `hs-flood` command line (after the program), for the parent.
pub(crate) fn child_args(
    setup: &FloodSetup,
    endpoint: SocketAddr,
    keys: &Path,
    initiations: usize,
    seconds: u64,
    window: usize,
) -> Vec<String> {
    vec![
        "hs-flood".into(),
        "--responder".into(),
        setup.responder_public.clone(),
        "--endpoint".into(),
        endpoint.to_string(),
        "--keys".into(),
        keys.to_string_lossy().into_owned(),
        "--initiations".into(),
        initiations.to_string(),
        "--seconds".into(),
        seconds.to_string(),
        "--window".into(),
        window.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn base64_round_trip() {
        assert_eq!(b64_encode(b""), "");
        assert_eq!(b64_encode(b"f"), "Zg==");
        assert_eq!(b64_encode(b"fo"), "Zm8=");
        assert_eq!(b64_encode(b"foo"), "Zm9v");
        let key: Vec<u8> = (0u8..32).collect();
        let enc = b64_encode(&key);
        assert_eq!(enc, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
        assert_eq!(b64_decode_key(&enc).unwrap().to_vec(), key);
        assert!(b64_decode_key("short=").is_err());
        assert!(b64_decode_key("!AECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").is_err());
    }

    #[test]
    fn public_keys_match_an_independent_x25519() {
        // Expected value computed with Python's `cryptography` (X25519PrivateKey).
        let private: [u8; 32] = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x8b, 0x5a, 0x74, 0xd3, 0x0f, 0xd0, 0x7f, 0x1b, 0xa7, 0x63,
            0xe1, 0x7a, 0x9d, 0x2a,
        ];
        let public = public_of(&Zeroizing::new(private));
        assert_eq!(
            b64_encode(&public),
            "OHT/zgKs2rzF02PrHZkQqMMiiA5XGGme5JnLkJVcBFI="
        );
    }

    #[test]
    fn sources_are_distinct_and_bounded() {
        assert_eq!(source_addr(0).unwrap(), Ipv4Addr::new(10, 205, 0, 1));
        assert_eq!(source_addr(999).unwrap(), Ipv4Addr::new(10, 205, 3, 232));
        assert!(source_addr(MAX_PEERS).is_err());
    }

    #[test]
    fn setup_has_matching_keys() {
        let mut rng = StdRng::seed_from_u64(7);
        let s = make_setup(3, &mut rng);
        assert_eq!(s.initiator_publics.len(), 3);
        let lines: Vec<&str> = s.keys_file_text.lines().collect();
        assert_eq!(lines.len(), 3);
        let k = Zeroizing::new(b64_decode_key(lines[1]).unwrap());
        assert_eq!(b64_encode(&public_of(&k)), s.initiator_publics[1]);
        let r = Zeroizing::new(b64_decode_key(&s.responder_private).unwrap());
        assert_eq!(b64_encode(&public_of(&r)), s.responder_public);
    }
}
