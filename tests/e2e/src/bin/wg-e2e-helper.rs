//! `wg-e2e-helper`: the small network programs the end-to-end tests run inside a network
//! namespace (`ip netns exec NS wg-e2e-helper …`). Every one is bounded in time and count.
//!
//! - `tcp-sink ADDR PORT TIMEOUT_S`: accepts one connection, reads to EOF, prints
//!   `received LEN HASH` (BLAKE2s-256, hex).
//! - `tcp-send ADDR PORT LEN SEED TIMEOUT_S`: sends LEN pseudo-random bytes, prints
//!   `sent LEN HASH`.
//! - `udp-hold ADDR PORT SECONDS`: keeps a UDP port bound (to make it "taken").
//! - `udp-fuzz BIND TARGET COUNT SEED PUBKEY_B64 CAPTURE_S`: binds BIND, waits up to
//!   CAPTURE_S seconds for a handshake initiation from TARGET (the daemon under test, which
//!   believes BIND is a peer's endpoint), then sends TARGET COUNT random datagrams, typed
//!   and sized ones, ones with a valid MAC1 for PUBKEY, and truncations and bit flips of
//!   the captured initiation. Prints a summary line.
//!
//! It writes `listening`/`holding`/`ready` on stdout once its socket is bound, so a test
//! can wait for it.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use blake2::digest::consts::U16;
use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac};

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("tcp-sink") => tcp_sink(&args[1..]),
        Some("tcp-send") => tcp_send(&args[1..]),
        Some("udp-hold") => udp_hold(&args[1..]),
        Some("udp-fuzz") => udp_fuzz(&args[1..]),
        _ => Err("usage: wg-e2e-helper tcp-sink|tcp-send|udp-hold|udp-fuzz ARGS…".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wg-e2e-helper: {e}");
            ExitCode::FAILURE
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Res<T> {
    args.get(i)
        .ok_or_else(|| format!("missing argument {what}"))?
        .parse()
        .map_err(|_| format!("invalid {what}: {:?}", args.get(i)))
}

fn say(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// xorshift64*: a deterministic byte stream, good enough for test payloads.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tcp_sink(args: &[String]) -> Res<()> {
    let addr: std::net::IpAddr = arg(args, 0, "ADDR")?;
    let port: u16 = arg(args, 1, "PORT")?;
    let timeout = Duration::from_secs(arg(args, 2, "TIMEOUT_S")?);
    let listener = TcpListener::bind((addr, port)).map_err(|e| format!("bind: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    say("listening");
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err("no connection before the timeout".to_owned());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("blocking: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("timeout: {e}"))?;
    let mut hash = Blake2s256::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "still receiving at the timeout ({len} bytes so far)"
            ));
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read after {len} bytes: {e}")),
        }
    }
    let digest = hash.finalize();
    let _ = stream.shutdown(Shutdown::Both);
    say(&format!("received {len} {}", hex(&digest)));
    Ok(())
}

fn tcp_send(args: &[String]) -> Res<()> {
    let addr: std::net::IpAddr = arg(args, 0, "ADDR")?;
    let port: u16 = arg(args, 1, "PORT")?;
    let len: u64 = arg(args, 2, "LEN")?;
    let seed: u64 = arg(args, 3, "SEED")?;
    let timeout = Duration::from_secs(arg(args, 4, "TIMEOUT_S")?);
    let target = SocketAddr::new(addr, port);
    let mut stream =
        TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| format!("timeout: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("timeout: {e}"))?;
    let mut rng = Rng::new(seed);
    let mut hash = Blake2s256::new();
    let mut left = len;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        rng.fill(&mut buf[..n]);
        stream
            .write_all(&buf[..n])
            .map_err(|e| format!("write after {} bytes: {e}", len - left))?;
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    // Wait for the sink to close: then it has read everything.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    say(&format!("sent {len} {}", hex(&hash.finalize())));
    Ok(())
}

fn udp_hold(args: &[String]) -> Res<()> {
    let addr: std::net::IpAddr = arg(args, 0, "ADDR")?;
    let port: u16 = arg(args, 1, "PORT")?;
    let secs: u64 = arg(args, 2, "SECONDS")?;
    let _socket = UdpSocket::bind((addr, port)).map_err(|e| format!("bind: {e}"))?;
    say("holding");
    std::thread::sleep(Duration::from_secs(secs.min(600)));
    Ok(())
}

/// Decodes standard base64 (with padding), as `wg` prints keys.
fn base64_decode(s: &str) -> Res<Vec<u8>> {
    let val = |c: u8| -> Res<u32> {
        Ok(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("invalid base64 character {:?}", c as char)),
        })
    };
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Ok(out)
}

const INITIATION_LEN: usize = 148;
const RESPONSE_LEN: usize = 92;
const COOKIE_LEN: usize = 64;
const TRANSPORT_MIN: usize = 32;

/// Writes a valid MAC1 (keyed with the receiver's public key) into a handshake message of
/// `len` bytes: MAC1 covers everything before it and sits 32 bytes before the end.
fn set_mac1(msg: &mut [u8], receiver_public: &[u8]) {
    let mut h = Blake2s256::new();
    h.update(b"mac1----");
    h.update(receiver_public);
    let key = h.finalize();
    let Ok(mut m) = <Blake2sMac<U16> as KeyInit>::new_from_slice(&key) else {
        return;
    };
    let at = msg.len() - 32;
    m.update(&msg[..at]);
    let mac: [u8; 16] = m.finalize().into_bytes().into();
    msg[at..at + 16].copy_from_slice(&mac);
    // MAC2 zero: "no cookie".
    for b in &mut msg[at + 16..] {
        *b = 0;
    }
}

fn header(kind: u8, msg: &mut [u8]) {
    msg[0] = kind;
    msg[1..4].fill(0);
}

fn udp_fuzz(args: &[String]) -> Res<()> {
    let bind: SocketAddr = arg(args, 0, "BIND")?;
    let target: SocketAddr = arg(args, 1, "TARGET")?;
    let count: usize = arg(args, 2, "COUNT")?;
    let seed: u64 = arg(args, 3, "SEED")?;
    let public = base64_decode(&arg::<String>(args, 4, "PUBKEY_B64")?)?;
    let capture_s: u64 = arg(args, 5, "CAPTURE_S")?;
    if public.len() != 32 {
        return Err("PUBKEY_B64 must decode to 32 bytes".to_owned());
    }
    let count = count.min(100_000);
    let socket = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    say("ready");

    // 1. Capture a real handshake initiation sent to us by the daemon under test.
    let mut captured: Option<Vec<u8>> = None;
    let deadline = Instant::now() + Duration::from_secs(capture_s.min(60));
    let mut buf = vec![0u8; 2048];
    while captured.is_none() && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| format!("timeout: {e}"))?;
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if from.ip() == target.ip() && n == INITIATION_LEN && buf[0] == 1 => {
                captured = Some(buf[..n].to_vec());
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }

    let mut rng = Rng::new(seed);
    let mut queue: Vec<Vec<u8>> = Vec::new();
    // 2. Random datagrams, length 0..=1500; half of them start with a plausible header.
    for _ in 0..count {
        let len = usize::try_from(rng.below(1501)).unwrap_or(0);
        let mut d = rng.bytes(len);
        if len >= 4 && rng.below(2) == 0 {
            let kind = u8::try_from(1 + rng.below(4)).unwrap_or(1);
            header(kind, &mut d);
        }
        queue.push(d);
    }
    // 3. Every message type at its exact size (random contents), and off by one.
    for _ in 0..50 {
        let extra = usize::try_from(rng.below(200)).unwrap_or(0);
        for (kind, len) in [
            (1u8, INITIATION_LEN),
            (2, RESPONSE_LEN),
            (3, COOKIE_LEN),
            (4, TRANSPORT_MIN + extra),
        ] {
            for l in [len - 1, len, len + 1] {
                let mut d = rng.bytes(l);
                header(kind, &mut d);
                queue.push(d);
            }
        }
    }
    // 4. Handshake messages with a valid MAC1 for the target: they pass the DoS filter
    //    and reach the key process, which must reject them.
    let receiver_index: [u8; 4] = captured
        .as_ref()
        .map_or([0; 4], |c| [c[4], c[5], c[6], c[7]]);
    for _ in 0..100 {
        let mut d = rng.bytes(INITIATION_LEN);
        header(1, &mut d);
        set_mac1(&mut d, &public);
        queue.push(d);
        let mut d = rng.bytes(RESPONSE_LEN);
        header(2, &mut d);
        d[8..12].copy_from_slice(&receiver_index);
        set_mac1(&mut d, &public);
        queue.push(d);
        let mut d = rng.bytes(COOKIE_LEN);
        header(3, &mut d);
        d[4..8].copy_from_slice(&receiver_index);
        queue.push(d);
        let extra = usize::try_from(rng.below(100)).unwrap_or(0);
        let mut d = rng.bytes(TRANSPORT_MIN + extra);
        header(4, &mut d);
        d[4..8].copy_from_slice(&receiver_index);
        queue.push(d);
    }
    // 5. The captured initiation: truncated at every length, one bit flipped at every byte,
    //    extended, replayed, and re-MACed for the target.
    if let Some(c) = &captured {
        for len in 0..c.len() {
            queue.push(c[..len].to_vec());
        }
        for i in 0..c.len() {
            let mut d = c.clone();
            d[i] ^= 1 << rng.below(8);
            queue.push(d);
        }
        let mut longer = c.clone();
        longer.extend_from_slice(&rng.bytes(16));
        queue.push(longer);
        for _ in 0..3 {
            queue.push(c.clone());
        }
        let mut remac = c.clone();
        set_mac1(&mut remac, &public);
        queue.push(remac.clone());
        for len in [1, 4, 8, 40, 100, 116, 132, 147] {
            queue.push(remac[..len].to_vec());
        }
    }

    // Send, paced so the receiver's socket buffer does not simply overflow; count replies.
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    let stop = Instant::now() + Duration::from_secs(60);
    let (mut sent, mut failed, mut replies) = (0usize, 0usize, 0usize);
    for (i, d) in queue.iter().enumerate() {
        if Instant::now() >= stop {
            break;
        }
        match socket.send_to(d, target) {
            Ok(_) => sent += 1,
            Err(_) => failed += 1,
        }
        if i % 32 == 31 {
            std::thread::sleep(Duration::from_millis(2));
            while socket.recv_from(&mut buf).is_ok() {
                replies += 1;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    while socket.recv_from(&mut buf).is_ok() {
        replies += 1;
    }
    say(&format!(
        "fuzz sent={sent} failed={failed} replies={replies} captured={}",
        captured.is_some()
    ));
    Ok(())
}
