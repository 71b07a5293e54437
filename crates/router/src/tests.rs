//! Router behaviour against the whitepaper's rules, with two routers joined by hand.

use super::*;
use crate::ip::tests::{ipv4, ipv6};
use wg_wire::constants::REJECT_AFTER_MESSAGES;

const A_ADDR: [u8; 4] = [10, 0, 0, 1];
const B_ADDR: [u8; 4] = [10, 0, 0, 2];

fn ep(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Two routers, each with the other as its only peer.
struct Pair {
    a: Router,
    b: Router,
    a_peer: PeerId,
    b_peer: PeerId,
    t0: Instant,
}

fn session(initiator: bool, local: u32, remote: u32, send: u8, recv: u8) -> NewSession {
    NewSession {
        initiator,
        local_index: local,
        remote_index: remote,
        send: SessionKey::from_bytes([send; 32]),
        recv: SessionKey::from_bytes([recv; 32]),
    }
}

impl Pair {
    fn new() -> Self {
        let (mut a, mut b) = (Router::new(), Router::new());
        let a_peer = a.add_peer();
        let b_peer = b.add_peer();
        a.insert_allowed_ip(a_peer, net("10.0.0.2/32")).unwrap();
        a.insert_allowed_ip(a_peer, net("fd00::2/128")).unwrap();
        b.insert_allowed_ip(b_peer, net("10.0.0.1/32")).unwrap();
        b.insert_allowed_ip(b_peer, net("fd00::1/128")).unwrap();
        a.set_endpoint(a_peer, ep("192.0.2.2:51820"));
        b.set_endpoint(b_peer, ep("192.0.2.1:51820"));
        Self {
            a,
            b,
            a_peer,
            b_peer,
            t0: Instant::now(),
        }
    }

    /// A handshake where `a` initiated: a's keypair is current, b's is next.
    fn handshake(&mut self, a_index: u32, b_index: u32, key: u8, now: Instant) {
        self.a
            .add_session(
                self.a_peer,
                session(true, a_index, b_index, key, key + 1),
                now,
            )
            .unwrap();
        self.b
            .add_session(
                self.b_peer,
                session(false, b_index, a_index, key + 1, key),
                now,
            )
            .unwrap();
    }
}

/// Seals an outbound packet into a fresh buffer.
fn seal(router: &mut Router, packet: &[u8], now: Instant) -> Result<Vec<u8>, Outbound> {
    match router.route_outbound(packet, now) {
        Outbound::Send { job, .. } => {
            let mut buf = vec![0u8; HEADROOM + packet.len() + TAILROOM];
            buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
            let n = job.seal(&mut buf).unwrap();
            buf.truncate(n);
            Ok(buf)
        }
        other => Err(other),
    }
}

/// Delivers a datagram: plan, open, finish.
fn deliver(
    router: &mut Router,
    datagram: &[u8],
    from: &str,
    now: Instant,
) -> Result<(Inbound, Vec<u8>), DropReason> {
    let job = router.plan_inbound(datagram, now)?;
    let mut buf = datagram.to_vec();
    let n = job.open(&mut buf)?;
    let plaintext = buf[HEADROOM..HEADROOM + n].to_vec();
    let inbound = router.finish_inbound(&job, &plaintext, datagram.len(), ep(from), now)?;
    let inner = match inbound.kind {
        InboundKind::Data { len } => plaintext[..len].to_vec(),
        InboundKind::Keepalive => Vec::new(),
        InboundKind::Refused(reason) => return Err(reason),
    };
    Ok((inbound, inner))
}

#[test]
fn data_flows_both_ways_and_the_responder_waits_for_confirmation() {
    let mut p = Pair::new();
    let now = p.t0;
    p.handshake(1, 2, 10, now);
    let to_a = ipv4(B_ADDR, A_ADDR, 10);
    // The responder's keypair is unconfirmed: its data is staged.
    assert!(matches!(
        p.b.route_outbound(&to_a, now),
        Outbound::Staged { .. }
    ));
    let to_b = ipv4(A_ADDR, B_ADDR, 100);
    let msg = seal(&mut p.a, &to_b, now).unwrap();
    let (inbound, inner) = deliver(&mut p.b, &msg, "192.0.2.1:51820", now).unwrap();
    assert!(inbound.handshake_complete);
    assert_eq!(inner, to_b);
    // Confirmed: the staged packet goes out, then new packets flow directly.
    let mut staged = Vec::new();
    p.b.flush_staged(p.b_peer, now, &mut staged);
    assert_eq!(staged.len(), 1);
    let (_, inner) = deliver(&mut p.a, &staged[0].message, "192.0.2.2:51820", now).unwrap();
    assert_eq!(inner, to_a);
    let v6 = ipv6("fd00::2".parse().unwrap(), "fd00::1".parse().unwrap(), 33);
    let msg = seal(&mut p.b, &v6, now).unwrap();
    let (inbound, inner) = deliver(&mut p.a, &msg, "192.0.2.2:51820", now).unwrap();
    assert!(!inbound.handshake_complete);
    assert_eq!(inner, v6);
}

#[test]
fn plaintext_is_padded_to_sixteen_bytes_but_not_beyond_the_mtu() {
    assert_eq!(padded_len(0, 1420), 0);
    assert_eq!(padded_len(1, 1420), 16);
    assert_eq!(padded_len(16, 1420), 16);
    assert_eq!(padded_len(1419, 1420), 1420);
    assert_eq!(padded_len(1420, 1420), 1420);
    assert_eq!(padded_len(1500, 1420), 1500);
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    let msg = seal(&mut p.a, &ipv4(A_ADDR, B_ADDR, 1), p.t0).unwrap();
    assert_eq!(msg.len(), 16 + 32 + 16, "21 bytes pad to 32");
}

#[test]
fn keepalive_is_an_empty_payload() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    let Outbound::Send { job, .. } = p.a.keepalive(p.a_peer, p.t0) else {
        panic!()
    };
    let mut buf = vec![0u8; job.message_len()];
    assert_eq!(job.seal(&mut buf).unwrap(), 32);
    let (inbound, _) = deliver(&mut p.b, &buf, "192.0.2.1:51820", p.t0).unwrap();
    assert_eq!(inbound.kind, InboundKind::Keepalive);
    // No session, no keepalive.
    let mut fresh = Pair::new();
    assert!(matches!(
        fresh.a.keepalive(fresh.a_peer, fresh.t0),
        Outbound::Dropped(_)
    ));
}

#[test]
fn each_counter_is_accepted_once_and_reordering_is_tolerated() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    let msgs: Vec<_> = (0..5)
        .map(|i| seal(&mut p.a, &ipv4(A_ADDR, B_ADDR, i), p.t0).unwrap())
        .collect();
    for i in [3, 0, 4, 1, 2] {
        deliver(&mut p.b, &msgs[i], "192.0.2.1:1", p.t0).unwrap();
    }
    for m in &msgs {
        assert_eq!(
            deliver(&mut p.b, m, "192.0.2.1:1", p.t0).err(),
            Some(DropReason::Replay)
        );
    }
}

#[test]
fn tampered_transport_fails_authentication() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    let msg = seal(&mut p.a, &ipv4(A_ADDR, B_ADDR, 10), p.t0).unwrap();
    for i in 8..msg.len() {
        let mut bad = msg.clone();
        bad[i] ^= 4;
        assert!(
            deliver(&mut p.b, &bad, "192.0.2.1:1", p.t0).is_err(),
            "byte {i}"
        );
    }
    // The counter was not burnt by the forgeries.
    deliver(&mut p.b, &msg, "192.0.2.1:1", p.t0).unwrap();
}

#[test]
fn source_address_must_belong_to_the_decrypting_peer() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    let spoofed = ipv4([10, 9, 9, 9], B_ADDR, 10);
    let msg = seal(&mut p.a, &spoofed, p.t0).unwrap();
    assert_eq!(
        deliver(&mut p.b, &msg, "192.0.2.1:1", p.t0).err(),
        Some(DropReason::SourceNotAllowed)
    );
}

#[test]
fn a_refused_packet_still_confirms_the_session() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    let spoofed = seal(&mut p.a, &ipv4([10, 9, 9, 9], B_ADDR, 10), p.t0).unwrap();
    let job = p.b.plan_inbound(&spoofed, p.t0).unwrap();
    let mut buf = spoofed.clone();
    let n = job.open(&mut buf).unwrap();
    let inbound =
        p.b.finish_inbound(
            &job,
            &buf[HEADROOM..HEADROOM + n],
            buf.len(),
            ep("192.0.2.1:1"),
            p.t0,
        )
        .unwrap();
    assert_eq!(
        inbound.kind,
        InboundKind::Refused(DropReason::SourceNotAllowed)
    );
    assert!(inbound.handshake_complete);
    assert!(p.b.can_send(p.b_peer, p.t0));
}

#[test]
fn nested_subnets_do_not_let_one_peer_spoof_another() {
    // b has two peers: a owns 10.0.0.0/8, c owns 10.1.0.0/16 inside it.
    let mut p = Pair::new();
    let c = p.b.add_peer();
    p.b.insert_allowed_ip(p.b_peer, net("10.0.0.0/8")).unwrap();
    p.b.insert_allowed_ip(c, net("10.1.0.0/16")).unwrap();
    p.handshake(1, 2, 10, p.t0);
    let pretending_to_be_c = ipv4([10, 1, 2, 3], B_ADDR, 10);
    let msg = seal(&mut p.a, &pretending_to_be_c, p.t0).unwrap();
    assert_eq!(
        deliver(&mut p.b, &msg, "192.0.2.1:1", p.t0).err(),
        Some(DropReason::SourceNotAllowed)
    );
    let own = ipv4([10, 2, 2, 3], B_ADDR, 10);
    let msg = seal(&mut p.a, &own, p.t0).unwrap();
    deliver(&mut p.b, &msg, "192.0.2.1:1", p.t0).unwrap();
}

#[test]
fn moving_an_allowed_ip_moves_its_traffic() {
    let mut p = Pair::new();
    let other = p.a.add_peer();
    p.a.set_endpoint(other, ep("192.0.2.9:1"));
    p.handshake(1, 2, 10, p.t0);
    let pkt = ipv4(A_ADDR, B_ADDR, 1);
    assert!(
        matches!(p.a.route_outbound(&pkt, p.t0), Outbound::Send { peer, .. } if peer == p.a_peer)
    );
    p.a.insert_allowed_ip(other, net("10.0.0.2/32")).unwrap();
    assert!(matches!(p.a.route_outbound(&pkt, p.t0), Outbound::Staged { peer } if peer == other));
    p.a.remove_allowed_ip(other, &net("10.0.0.2/32"));
    assert!(matches!(
        p.a.route_outbound(&pkt, p.t0),
        Outbound::Dropped(DropReason::NoRoute)
    ));
}

#[test]
fn endpoint_is_learned_from_authenticated_packets_only() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    let msg = seal(&mut p.a, &ipv4(A_ADDR, B_ADDR, 1), p.t0).unwrap();
    let mut forged = msg.clone();
    forged[20] ^= 1;
    let _ = deliver(&mut p.b, &forged, "203.0.113.66:6666", p.t0);
    assert_eq!(
        p.b.stats(p.b_peer).unwrap().endpoint,
        Some(ep("192.0.2.1:51820"))
    );
    deliver(&mut p.b, &msg, "198.51.100.7:4000", p.t0).unwrap();
    assert_eq!(
        p.b.stats(p.b_peer).unwrap().endpoint,
        Some(ep("198.51.100.7:4000"))
    );
}

#[test]
fn with_learning_off_a_configured_endpoint_stays_and_a_missing_one_is_learned() {
    let mut p = Pair::new();
    p.b.set_learn_endpoints(false);
    p.handshake(1, 2, 10, p.t0);
    let msg = seal(&mut p.a, &ipv4(A_ADDR, B_ADDR, 1), p.t0).unwrap();
    let (inbound, _) = deliver(&mut p.b, &msg, "198.51.100.7:4000", p.t0).unwrap();
    assert!(!inbound.endpoint_changed);
    assert_eq!(
        p.b.stats(p.b_peer).unwrap().endpoint,
        Some(ep("192.0.2.1:51820"))
    );
    assert!(!p.b.learn_endpoint(p.b_peer, ep("198.51.100.8:4000")));
    assert_eq!(
        p.b.stats(p.b_peer).unwrap().endpoint,
        Some(ep("192.0.2.1:51820"))
    );
    // A peer without a configured endpoint learns it even so.
    let other = p.b.add_peer();
    assert!(p.b.learn_endpoint(other, ep("198.51.100.9:9")));
    assert_eq!(
        p.b.stats(other).unwrap().endpoint,
        Some(ep("198.51.100.9:9"))
    );
    // Learning on again: the packet's source wins.
    p.b.set_learn_endpoints(true);
    let msg = seal(&mut p.a, &ipv4(A_ADDR, B_ADDR, 2), p.t0).unwrap();
    let (inbound, _) = deliver(&mut p.b, &msg, "198.51.100.7:4000", p.t0).unwrap();
    assert!(inbound.endpoint_changed);
    assert_eq!(
        p.b.stats(p.b_peer).unwrap().endpoint,
        Some(ep("198.51.100.7:4000"))
    );
}

#[test]
fn staging_queue_is_bounded_and_drops_the_oldest() {
    let mut p = Pair::new();
    for i in 0..MAX_STAGED_PACKETS + 5 {
        let pkt = ipv4(A_ADDR, B_ADDR, i % 200);
        assert!(matches!(
            p.a.route_outbound(&pkt, p.t0),
            Outbound::Staged { .. }
        ));
    }
    assert_eq!(p.a.staged_len(p.a_peer), MAX_STAGED_PACKETS);
    p.handshake(1, 2, 10, p.t0);
    let mut out = Vec::new();
    p.a.flush_staged(p.a_peer, p.t0, &mut out);
    assert_eq!(out.len(), MAX_STAGED_PACKETS);
    let (_, first) = deliver(&mut p.b, &out[0].message, "192.0.2.1:1", p.t0).unwrap();
    assert_eq!(
        first.len(),
        20 + 5,
        "packets 0..5 were dropped, the oldest kept is #5"
    );
    assert_eq!(p.a.staged_len(p.a_peer), 0);
}

#[test]
fn rekey_after_time_is_signalled_to_the_sending_initiator_only() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    let pkt = ipv4(A_ADDR, B_ADDR, 1);
    let early = p.t0 + REKEY_AFTER_TIME - Duration::from_secs(1);
    assert!(matches!(
        p.a.route_outbound(&pkt, early),
        Outbound::Send { rekey: false, .. }
    ));
    let msg = seal(&mut p.a, &pkt, early).unwrap();
    deliver(&mut p.b, &msg, "192.0.2.1:1", early).unwrap();
    let late = p.t0 + REKEY_AFTER_TIME;
    assert!(matches!(
        p.a.route_outbound(&pkt, late),
        Outbound::Send { rekey: true, .. }
    ));
    let back = ipv4(B_ADDR, A_ADDR, 1);
    assert!(matches!(
        p.b.route_outbound(&back, late),
        Outbound::Send { rekey: false, .. }
    ));
}

#[test]
fn rekey_after_messages_is_signalled() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    p.a.peers
        .get_mut(&p.a_peer)
        .unwrap()
        .keypairs
        .current
        .as_mut()
        .unwrap()
        .send_counter = REKEY_AFTER_MESSAGES;
    assert!(matches!(
        p.a.route_outbound(&ipv4(A_ADDR, B_ADDR, 1), p.t0),
        Outbound::Send { rekey: true, .. }
    ));
}

#[test]
fn reject_after_messages_stops_sending() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    p.a.peers
        .get_mut(&p.a_peer)
        .unwrap()
        .keypairs
        .current
        .as_mut()
        .unwrap()
        .send_counter = REJECT_AFTER_MESSAGES - 1;
    let pkt = ipv4(A_ADDR, B_ADDR, 1);
    assert!(matches!(
        p.a.route_outbound(&pkt, p.t0),
        Outbound::Send { .. }
    ));
    assert!(matches!(
        p.a.route_outbound(&pkt, p.t0),
        Outbound::Staged { .. }
    ));
}

#[test]
fn receiving_initiator_reports_its_keypair_near_reject_after_time() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    let confirm = seal(&mut p.a, &ipv4(A_ADDR, B_ADDR, 1), p.t0).unwrap();
    deliver(&mut p.b, &confirm, "192.0.2.1:1", p.t0).unwrap();
    let threshold = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;
    let before = p.t0 + threshold - Duration::from_secs(1);
    let msg = seal(&mut p.b, &ipv4(B_ADDR, A_ADDR, 1), before).unwrap();
    assert!(
        !deliver(&mut p.a, &msg, "192.0.2.2:1", before)
            .unwrap()
            .0
            .rekey
    );
    let at = p.t0 + threshold;
    let m1 = seal(&mut p.b, &ipv4(B_ADDR, A_ADDR, 1), at).unwrap();
    let m2 = seal(&mut p.b, &ipv4(B_ADDR, A_ADDR, 1), at).unwrap();
    assert!(deliver(&mut p.a, &m1, "192.0.2.2:1", at).unwrap().0.rekey);
    // A fact about the keypair, reported for every packet: asking once per session is the
    // timers' rule (`want_last_minute_handshake`), not the router's.
    assert!(deliver(&mut p.a, &m2, "192.0.2.2:1", at).unwrap().0.rekey);
    // The responder never rekeys on receive.
    let m3 = seal(&mut p.a, &ipv4(A_ADDR, B_ADDR, 1), at).unwrap();
    assert!(!deliver(&mut p.b, &m3, "192.0.2.1:1", at).unwrap().0.rekey);
}

#[test]
fn keypairs_expire_after_reject_after_time() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    let pkt = ipv4(A_ADDR, B_ADDR, 1);
    let almost = p.t0 + REJECT_AFTER_TIME - Duration::from_millis(1);
    let msg = seal(&mut p.a, &pkt, almost).unwrap();
    let expired = p.t0 + REJECT_AFTER_TIME;
    assert_eq!(
        deliver(&mut p.b, &msg, "192.0.2.1:1", expired).err(),
        Some(DropReason::Expired)
    );
    assert!(matches!(
        p.a.route_outbound(&pkt, expired),
        Outbound::Staged { .. }
    ));
    assert!(!p.a.can_send(p.a_peer, expired));
}

#[test]
fn previous_keypair_still_receives_after_rotation() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    let confirm = seal(&mut p.a, &ipv4(A_ADDR, B_ADDR, 1), p.t0).unwrap();
    deliver(&mut p.b, &confirm, "192.0.2.1:1", p.t0).unwrap();
    let old = seal(&mut p.a, &ipv4(A_ADDR, B_ADDR, 1), p.t0).unwrap();
    let later = p.t0 + Duration::from_secs(121);
    p.handshake(3, 4, 20, later);
    let new = seal(&mut p.a, &ipv4(A_ADDR, B_ADDR, 2), later).unwrap();
    // b: the new keypair is next; the in-flight packet of the current one still arrives.
    deliver(&mut p.b, &old, "192.0.2.1:1", later).unwrap();
    let (inbound, _) = deliver(&mut p.b, &new, "192.0.2.1:1", later).unwrap();
    assert!(inbound.handshake_complete);
    // Now the first keypair is `previous`: late packets on it are still accepted.
    let late = seal_with_old_counter(&mut p);
    deliver(&mut p.b, &late, "192.0.2.1:1", later).unwrap();
    // A third handshake retires the first keypair entirely.
    let even_later = later + Duration::from_secs(121);
    p.handshake(5, 6, 30, even_later);
    assert_eq!(
        deliver(&mut p.b, &old, "192.0.2.1:1", even_later).err(),
        Some(DropReason::UnknownIndex)
    );
    let mut retired: Vec<u32> = p.b.drain_retired_indices().collect();
    retired.sort_unstable();
    assert_eq!(retired, vec![2]);
}

/// A packet on a's previous keypair, as if it had been delayed in the network.
fn seal_with_old_counter(p: &mut Pair) -> Vec<u8> {
    let k =
        p.a.peers
            .get_mut(&p.a_peer)
            .unwrap()
            .keypairs
            .previous
            .as_mut()
            .unwrap();
    let counter = k.send_counter;
    k.send_counter += 1;
    let pkt = ipv4(A_ADDR, B_ADDR, 3);
    let job = SealJob {
        cipher: Arc::clone(&k.send),
        receiver_index: k.remote_index,
        counter,
        plaintext_len: pkt.len(),
        padded_len: padded_len(pkt.len(), DEFAULT_MTU),
    };
    let mut buf = vec![0u8; job.message_len()];
    buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
    job.seal(&mut buf).unwrap();
    buf
}

#[test]
fn clearing_keypairs_erases_sessions_and_frees_indices() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    p.a.clear_keypairs(p.a_peer);
    assert!(!p.a.can_send(p.a_peer, p.t0));
    assert_eq!(p.a.drain_retired_indices().collect::<Vec<_>>(), vec![1]);
    let msg = {
        let mut q = Pair::new();
        q.handshake(1, 2, 10, q.t0);
        seal(&mut q.b, &ipv4(B_ADDR, A_ADDR, 1), q.t0)
    };
    assert!(msg.is_err(), "b cannot send before confirmation");
}

#[test]
fn counters_and_handshake_time_are_kept() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    assert_eq!(p.a.stats(p.a_peer).unwrap().last_handshake, Some(p.t0));
    assert_eq!(
        p.b.stats(p.b_peer).unwrap().last_handshake,
        None,
        "unconfirmed"
    );
    let msg = seal(&mut p.a, &ipv4(A_ADDR, B_ADDR, 30), p.t0).unwrap();
    p.a.count_tx(p.a_peer, msg.len());
    let t = p.t0 + Duration::from_secs(1);
    deliver(&mut p.b, &msg, "192.0.2.1:1", t).unwrap();
    let s = p.b.stats(p.b_peer).unwrap();
    assert_eq!((s.rx_bytes, s.last_handshake), (msg.len() as u64, Some(t)));
    assert_eq!(p.a.stats(p.a_peer).unwrap().tx_bytes, msg.len() as u64);
}

#[test]
fn removed_peer_loses_routes_and_keys() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    let msg = seal(&mut p.a, &ipv4(A_ADDR, B_ADDR, 1), p.t0).unwrap();
    p.b.remove_peer(p.b_peer);
    assert_eq!(
        deliver(&mut p.b, &msg, "192.0.2.1:1", p.t0).err(),
        Some(DropReason::UnknownIndex)
    );
    assert!(matches!(
        p.b.route_outbound(&ipv4(B_ADDR, A_ADDR, 1), p.t0),
        Outbound::Dropped(DropReason::NoRoute)
    ));
}

#[test]
fn batches_can_be_sealed_on_other_threads_in_order() {
    let mut p = Pair::new();
    p.handshake(1, 2, 10, p.t0);
    let packets: Vec<Vec<u8>> = (0..64).map(|i| ipv4(A_ADDR, B_ADDR, i)).collect();
    let mut plans = Vec::new();
    p.a.route_outbound_batch(packets.iter().map(Vec::as_slice), p.t0, &mut plans);
    let mut bufs: Vec<Vec<u8>> = packets
        .iter()
        .map(|pkt| {
            let mut b = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
            b[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
            b
        })
        .collect();
    let jobs: Vec<&SealJob> = plans
        .iter()
        .map(|o| match o {
            Outbound::Send { job, .. } => job,
            _ => panic!(),
        })
        .collect();
    std::thread::scope(|s| {
        for (chunk_jobs, chunk_bufs) in jobs.chunks(16).zip(bufs.chunks_mut(16)) {
            s.spawn(move || {
                for (job, buf) in chunk_jobs.iter().zip(chunk_bufs) {
                    let n = job.seal(buf).unwrap();
                    buf.truncate(n);
                }
            });
        }
    });
    for (i, buf) in bufs.iter().enumerate() {
        let (_, inner) = deliver(&mut p.b, buf, "192.0.2.1:1", p.t0).unwrap();
        assert_eq!(inner, packets[i]);
        assert_eq!(u64::from_le_bytes(buf[8..16].try_into().unwrap()), i as u64);
    }
}

#[test]
fn expiring_current_keypairs_stops_sending_but_not_receiving() {
    let mut p = Pair::new();
    let now = p.t0;
    p.handshake(1, 2, 10, now);
    let to_b = ipv4(A_ADDR, B_ADDR, 100);
    let before = seal(&mut p.a, &to_b, now).unwrap();
    // b's keypair is still `next` (unconfirmed): expiring must cover it as well.
    p.a.expire_current_keypairs();
    p.b.expire_current_keypairs();
    assert!(!p.a.can_send(p.a_peer, now));
    assert!(
        matches!(p.a.route_outbound(&to_b, now), Outbound::Staged { .. }),
        "a new handshake is needed before anything is sent"
    );
    // A packet sealed before the key change is still accepted and confirms b's keypair,
    // which must not become sendable through that confirmation.
    let (inbound, inner) = deliver(&mut p.b, &before, "192.0.2.1:51820", now).unwrap();
    assert!(inbound.handshake_complete);
    assert_eq!(inner, to_b);
    assert!(!p.b.can_send(p.b_peer, now));
    // A new session sends again.
    p.handshake(3, 4, 20, now);
    assert!(p.a.can_send(p.a_peer, now));
    assert!(seal(&mut p.a, &to_b, now).is_ok());
}
