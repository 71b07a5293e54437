//! The configuration interface: `wg setconf`/`showconf` round trips, `get=1` secrets,
//! a peer with our own public key, concurrent UAPI clients, and malformed requests.
// Linux only: network namespaces and the Linux daemon.
#![cfg(target_os = "linux")]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use wg_e2e::env::public_key;
use wg_e2e::topo::{TUN4, TUN6};
use wg_e2e::uapi::{Reply, request};
use wg_e2e::wgtool::base64_to_hex;
use wg_e2e::{Conf, Daemon, Env, Impl, Pair, PairSpec, Solo, ping_ok, setup};

/// Writes `text` to a private file and runs `wg setconf IF FILE`.
fn setconf(env: &Env, d: &Daemon, text: &str) -> Result<()> {
    let file = env.dir.write_secret(&env.file_name("conf", "conf"), text)?;
    d.wg(&["setconf", &d.ifname, &file.to_string_lossy()])
        .map(drop)
        .with_context(|| format!("wg setconf of:\n{text}"))
}

/// `wg showconf` must give back `text`, compared parsed and order-insensitively.
fn check_showconf(d: &Daemon, text: &str) -> Result<()> {
    let want = Conf::parse(text)?;
    let raw = d.wg(&["showconf", &d.ifname])?;
    let got = Conf::parse(&raw).with_context(|| format!("parsing showconf:\n{raw}"))?;
    ensure!(
        got == want,
        "`wg showconf` differs from what `wg setconf` was given\n--- given:\n{text}\n--- showconf:\n{raw}\n--- parsed given: {want:#?}\n--- parsed showconf: {got:#?}"
    );
    Ok(())
}

#[test]
fn setconf_then_showconf_gives_the_same_configuration() -> Result<()> {
    let env = setup!("cf");
    let solo = Solo::new(&env, Impl::Rs)?;
    let d = &solo.d;
    let k = env.keys("i")?;
    let (p1, p2, p3, p4) = (
        env.keys("p1")?,
        env.keys("p2")?,
        env.keys("p3")?,
        env.keys("p4")?,
    );
    let (psk1, _) = env.psk("p1")?;
    let (psk4, _) = env.psk("p4")?;
    // The namespace has only `lo`: keepalives to these endpoints go nowhere.
    let first = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51999\nFwMark = 0x2a\n\n\
         [Peer]\nPublicKey = {}\nPresharedKey = {psk1}\n\
         AllowedIPs = 10.1.0.0/16, fd01::/48, 192.168.7.7/32\n\
         Endpoint = 192.0.2.1:51820\nPersistentKeepalive = 25\n\n\
         [Peer]\nPublicKey = {}\nAllowedIPs = 0.0.0.0/0, ::/0\nEndpoint = [2001:db8::1]:4500\n\n\
         [Peer]\nPublicKey = {}\n",
        k.private, p1.public, p2.public, p3.public
    );
    setconf(&env, d, &first)?;
    check_showconf(d, &first).with_context(|| d.diag())?;

    // A second setconf replaces everything: p1 and p3 go, p2's allowed IPs are replaced,
    // p4 arrives, the fwmark is cleared, the private key changes.
    let k2 = env.keys("i2")?;
    let second = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 52000\n\n\
         [Peer]\nPublicKey = {}\nAllowedIPs = 10.2.0.0/24\n\n\
         [Peer]\nPublicKey = {}\nPresharedKey = {psk4}\nAllowedIPs = fd04::4/128, 10.4.0.4/32\n\
         Endpoint = 198.51.100.4:1\nPersistentKeepalive = 1\n",
        k2.private, p2.public, p4.public
    );
    setconf(&env, d, &second)?;
    check_showconf(d, &second).with_context(|| d.diag())?;
    let dump = d.dump()?;
    ensure!(
        dump.public_key == k2.public,
        "public key {} after setting the private key of {}",
        dump.public_key,
        k2.public
    );
    Ok(())
}

#[test]
fn get_returns_private_key_and_preshared_keys() -> Result<()> {
    let env = setup!("gk");
    let solo = Solo::new(&env, Impl::Rs)?;
    let d = &solo.d;
    let k = env.keys("i")?;
    let (p1, p2) = (env.keys("p1")?, env.keys("p2")?);
    let (psk1, psk1_file) = env.psk("p1")?;
    let (psk2, psk2_file) = env.psk("p2")?;
    d.set(&[
        "private-key",
        &k.file.to_string_lossy(),
        "peer",
        &p1.public,
        "preshared-key",
        &psk1_file.to_string_lossy(),
        "peer",
        &p2.public,
        "preshared-key",
        &psk2_file.to_string_lossy(),
    ])?;
    // Through wg(8): showconf prints the secrets.
    let conf = d.showconf()?;
    ensure!(
        conf.interface.get("privatekey") == Some(&k.private),
        "showconf PrivateKey {:?}, set {}",
        conf.interface.get("privatekey"),
        k.private
    );
    for (p, psk) in [(&p1, &psk1), (&p2, &psk2)] {
        let got = conf
            .peers
            .get(&p.public)
            .and_then(|e| e.get("presharedkey"))
            .and_then(|v| v.first());
        ensure!(
            got == Some(psk),
            "showconf PresharedKey of {} is {got:?}, set {psk}",
            p.public
        );
    }
    // The raw protocol: `get=1` answers hex keys and errno=0.
    let reply = request(d.socket(), b"get=1\n\n", false, Duration::from_secs(5))?;
    ensure!(reply.errno == Some(0), "get=1 answered {reply:?}");
    for (what, key) in [
        ("private_key", &k.private),
        ("preshared_key", &psk1),
        ("preshared_key", &psk2),
        ("public_key", &p1.public),
    ] {
        let line = format!("{what}={}", base64_to_hex(key)?);
        ensure!(
            reply.text.lines().any(|l| l == line),
            "get=1 lacks the line {what}=<hex of {key}>; it answered:\n{}",
            reply.text
        );
    }
    ensure!(
        reply.text.ends_with("errno=0\n\n"),
        "get=1 answer must end with errno=0 and an empty line: {:?}",
        reply.text
    );
    Ok(())
}

#[test]
fn peer_with_our_own_public_key_is_ignored() -> Result<()> {
    let env = setup!("ok");
    let solo = Solo::new(&env, Impl::Rs)?;
    let d = &solo.d;
    let k = env.keys("i")?;
    let other = env.keys("o")?;
    // Kernel and wireguard-go silently skip a peer whose key is the interface's own, and
    // apply the rest of the request.
    d.set(&[
        "private-key",
        &k.file.to_string_lossy(),
        "peer",
        &k.public,
        "allowed-ips",
        "10.9.0.1/32",
        "endpoint",
        "192.0.2.9:9",
        "peer",
        &other.public,
        "allowed-ips",
        "10.9.0.2/32",
    ])
    .context("a request with a peer equal to our own key must still succeed")?;
    let dump = d.dump()?;
    let keys: Vec<&str> = dump.peers.iter().map(|p| p.public_key.as_str()).collect();
    ensure!(
        keys == [other.public.as_str()],
        "peers after adding our own key and one other: {keys:?} (want only {})\n{}",
        other.public,
        d.diag()
    );
    ensure!(
        dump.peers[0].allowed_ips == ["10.9.0.2/32"],
        "the other peer's allowed IPs are {:?}",
        dump.peers[0].allowed_ips
    );
    // Setting a private key whose public key is an existing peer's removes that peer.
    d.set(&["private-key", &other.file.to_string_lossy()])?;
    let dump = d.dump()?;
    ensure!(
        dump.public_key == other.public && dump.peers.is_empty(),
        "after taking the private key of peer {}, the interface is {} with peers {:?} (the peer must be gone)",
        other.public,
        dump.public_key,
        dump.peers.iter().map(|p| &p.public_key).collect::<Vec<_>>()
    );
    // And adding it again is ignored too.
    d.set(&["peer", &other.public, "allowed-ips", "10.9.0.3/32"])?;
    ensure!(
        d.dump()?.peers.is_empty(),
        "our own key was added as a peer"
    );
    let _ = public_key(&k.private)?;
    Ok(())
}

#[test]
fn idle_uapi_clients_do_not_block_others() -> Result<()> {
    let env = setup!("id");
    let solo = Solo::rs_keyed(&env)?;
    let d = &solo.d;
    // Three clients that connect and then say nothing, or stop mid-request.
    let idle = UnixStream::connect(d.socket())?;
    let mut half_get = UnixStream::connect(d.socket())?;
    half_get.write_all(b"get=1\n")?;
    let mut half_set = UnixStream::connect(d.socket())?;
    half_set.write_all(b"set=1\nlisten_port=51821\n")?;
    std::thread::sleep(Duration::from_millis(200));
    for round in 0..3 {
        let start = Instant::now();
        let out = d.wg_output(&["show", &d.ifname])?;
        let took = start.elapsed();
        ensure!(
            out.status.success() && took < Duration::from_secs(3),
            "round {round}: `wg show` with idle UAPI clients connected: {} after {:.1} s: {}{}",
            out.status,
            took.as_secs_f64(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let start = Instant::now();
        d.set(&["listen-port", &(51830 + round).to_string()])?;
        ensure!(
            start.elapsed() < Duration::from_secs(3),
            "`wg set` took {:.1} s with idle clients connected",
            start.elapsed().as_secs_f64()
        );
    }
    ensure!(
        d.dump()?.listen_port == 51832,
        "listen port not applied while idle clients were connected"
    );
    drop((idle, half_get, half_set));
    Ok(())
}

/// What a malformed request must get.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// `errno=N` with exactly this N (wireguard-go's value).
    Errno(i64),
    /// Some non-zero errno.
    AnyError,
    /// The connection closed without an answer (wireguard-go for an unknown operation).
    Closed,
}

/// Requests and the answers wireguard-go gives them (checked against wireguard-go itself
/// by `malformed_uapi_table_matches_wireguard_go`). `{pk}` is the hex public key of an
/// existing peer.
fn malformed(pk: &str) -> Vec<(&'static str, Vec<u8>, bool, Expect)> {
    use Expect::*;
    let with_peer = |rest: &str| format!("set=1\npublic_key={pk}\n{rest}").into_bytes();
    let mut huge = b"set=1\nprivate_key=".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend_from_slice(b"\n\n");
    vec![
        ("unknown operation", b"garbage\n\n".to_vec(), false, Closed),
        ("empty operation", b"\n".to_vec(), false, Closed),
        (
            "line without =",
            b"set=1\nthis is not a key value\n\n".to_vec(),
            false,
            Errno(-71),
        ),
        (
            "unknown device key",
            b"set=1\nunknown_key=1\n\n".to_vec(),
            false,
            Errno(-22),
        ),
        (
            "private key not hex",
            b"set=1\nprivate_key=zz\n\n".to_vec(),
            false,
            Errno(-22),
        ),
        (
            "private key 63 hex digits",
            format!("set=1\nprivate_key={}\n\n", "a".repeat(63)).into_bytes(),
            false,
            Errno(-22),
        ),
        (
            "private key in base64",
            b"set=1\nprivate_key=YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=\n\n".to_vec(),
            false,
            Errno(-22),
        ),
        (
            "listen port 70000",
            b"set=1\nlisten_port=70000\n\n".to_vec(),
            false,
            Errno(-22),
        ),
        (
            "listen port -1",
            b"set=1\nlisten_port=-1\n\n".to_vec(),
            false,
            Errno(-22),
        ),
        (
            "fwmark not a number",
            b"set=1\nfwmark=abc\n\n".to_vec(),
            false,
            Errno(-22),
        ),
        (
            "allowed ip 300.1.1.1/33",
            with_peer("allowed_ip=300.1.1.1/33\n\n"),
            false,
            Errno(-22),
        ),
        (
            "endpoint nonsense",
            with_peer("endpoint=nonsense\n\n"),
            false,
            Errno(-22),
        ),
        (
            "keepalive 99999",
            with_peer("persistent_keepalive_interval=99999\n\n"),
            false,
            Errno(-22),
        ),
        (
            "protocol version 2",
            with_peer("protocol_version=2\n\n"),
            false,
            Errno(-22),
        ),
        (
            "peer key before public_key",
            b"set=1\nallowed_ip=10.0.0.0/8\n\n".to_vec(),
            false,
            Errno(-22),
        ),
        (
            "unknown peer key",
            with_peer("unknown_peer_key=1\n\n"),
            false,
            Errno(-22),
        ),
        (
            "get with extra lines",
            b"get=1\nextra=1\n\n".to_vec(),
            false,
            Errno(-22),
        ),
        (
            "NUL and 0xff bytes",
            b"set=1\n\x00\xff\xfe=\x01\n\n".to_vec(),
            false,
            Errno(-22),
        ),
        (
            "invalid UTF-8 key",
            b"set=1\n\xc3\x28=1\n\n".to_vec(),
            false,
            Errno(-22),
        ),
        (
            "replace_peers=maybe",
            b"set=1\nreplace_peers=maybe\n\n".to_vec(),
            false,
            Errno(-22),
        ),
        ("1 MiB line", huge, false, Errno(-5)),
        (
            "half line, disconnect",
            b"set=1\nprivate_key=".to_vec(),
            true,
            AnyError,
        ),
        ("half get, disconnect", b"get=1\n".to_vec(), true, Closed),
        ("operation without newline", b"set=1".to_vec(), true, Closed),
        ("nothing, disconnect", Vec::new(), true, Closed),
    ]
}

/// Sends every malformed request to `d` and checks the answers; returns the failures.
fn check_malformed(d: &Daemon, pk_b64: &str) -> Result<Vec<String>> {
    let pk = base64_to_hex(pk_b64)?;
    let mut failures = Vec::new();
    for (name, req, half_close, expect) in malformed(&pk) {
        let start = Instant::now();
        let reply: Reply = request(d.socket(), &req, half_close, Duration::from_secs(5))?;
        let took = start.elapsed().as_secs_f64();
        let ok = match expect {
            Expect::Errno(n) => reply.errno == Some(n),
            Expect::AnyError => reply.errno.is_some_and(|e| e != 0),
            Expect::Closed => reply.closed && reply.errno.is_none() && reply.text.is_empty(),
        };
        if !ok {
            failures.push(format!(
                "{name}: expected {expect:?}, got {reply:?} after {took:.1} s"
            ));
        }
    }
    Ok(failures)
}

#[test]
fn malformed_uapi_requests_get_errors_and_the_tunnel_survives() -> Result<()> {
    let env = setup!("mu");
    let pair = Pair::new(&env, PairSpec::rs())?;
    ping_ok(&pair.hosts.a, TUN4[1], &[]).with_context(|| pair.diag())?;
    let before = pair.a.dump()?;
    let tree = pair.a.process_tree();
    ensure!(
        tree.len() >= 3,
        "expected the monitor, keyd and datad, found processes {tree:?}"
    );
    let failures = check_malformed(&pair.a, &pair.kb.public)?;
    // Nothing crashed or restarted, the configuration is intact, the tunnel works.
    let after_tree = pair.a.process_tree();
    ensure!(
        after_tree == tree,
        "process tree changed from {tree:?} to {after_tree:?} (a worker crashed and was restarted?)\n{}",
        pair.a.diag()
    );
    let after = pair.a.dump()?;
    let (p0, p1) = (before.peer(&pair.kb.public)?, after.peer(&pair.kb.public)?);
    ensure!(
        after.listen_port == before.listen_port
            && after.private_key == before.private_key
            && p1.allowed_ips == p0.allowed_ips
            && p1.endpoint == p0.endpoint,
        "malformed requests changed the configuration:\nbefore {before:#?}\nafter {after:#?}"
    );
    ping_ok(&pair.hosts.a, TUN4[1], &[]).with_context(|| pair.diag())?;
    ping_ok(&pair.hosts.b, TUN6[0], &[]).with_context(|| pair.diag())?;
    ensure!(
        failures.is_empty(),
        "{} malformed requests were answered differently from wireguard-go:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// The expectations of the table above are wireguard-go's behaviour: check them against it.
#[test]
fn malformed_uapi_table_matches_wireguard_go() -> Result<()> {
    let env = setup!("mg");
    let solo = Solo::new(&env, Impl::Go)?;
    let k = env.keys("i")?;
    let p = env.keys("p")?;
    solo.d
        .set(&["private-key", &k.file.to_string_lossy(), "peer", &p.public])?;
    let failures = check_malformed(&solo.d, &p.public)?;
    ensure!(
        failures.is_empty(),
        "wireguard-go does not behave as the table says:\n{}",
        failures.join("\n")
    );
    Ok(())
}
