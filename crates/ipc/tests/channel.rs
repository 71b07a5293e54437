//! Both transports carry the same messages and descriptors; malformed input closes.
// Linux only, as the crate under test.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;

use wg_ipc::messages::{DatadToKeyd, Hello, KeydToDatad, Role};
use wg_ipc::{Channel, IpcError, MAX_MESSAGE_LEN, seqpacket_pair};
use wg_wire::PublicKey;

async fn exchange(a: Channel, b: Channel) {
    a.send(&KeydToDatad::Hello(Hello::new(Role::Keyd)), &[])
        .await
        .unwrap();
    let got = b.recv::<KeydToDatad>().await.unwrap();
    assert!(matches!(got.msg, KeydToDatad::Hello(h) if h.role == Role::Keyd));
    assert!(got.fds.is_empty());

    // A descriptor travels: write into one end of a stream pair, pass the other along.
    let (mut s1, s2) = UnixStream::pair().unwrap();
    b.send(
        &DatadToKeyd::ZeroKeys {
            public_key: PublicKey([7; 32]),
        },
        &[s2.as_fd()],
    )
    .await
    .unwrap();
    drop(s2);
    let got = a.recv::<DatadToKeyd>().await.unwrap();
    assert_eq!(got.fds.len(), 1);
    let mut passed = UnixStream::from(got.fds.into_iter().next().unwrap());
    s1.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    passed.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    drop(a);
    assert!(matches!(
        b.recv::<KeydToDatad>().await,
        Err(IpcError::Closed)
    ));
}

#[tokio::test]
async fn seqpacket_carries_messages_and_fds() {
    let (x, y) = seqpacket_pair().unwrap();
    exchange(Channel::from_fd(x).unwrap(), Channel::from_fd(y).unwrap()).await;
}

#[tokio::test]
async fn memory_pair_behaves_the_same() {
    let (a, b) = Channel::memory_pair();
    exchange(a, b).await;
}

#[tokio::test]
async fn garbage_and_oversized_datagrams_are_errors() {
    let (x, y) = seqpacket_pair().unwrap();
    let raw = x.as_raw_fd();
    let chan = Channel::from_fd(y).unwrap();
    let write = |bytes: &[u8]| {
        nix::sys::socket::send(raw, bytes, nix::sys::socket::MsgFlags::empty()).unwrap();
    };
    write(&[0xff, 0xff, 0xff]);
    assert!(matches!(
        chan.recv::<KeydToDatad>().await,
        Err(IpcError::Message(wg_ipc::MessageError::Decode(_)))
    ));
    write(&vec![0u8; MAX_MESSAGE_LEN + 10]);
    assert!(matches!(
        chan.recv::<KeydToDatad>().await,
        Err(IpcError::Message(wg_ipc::MessageError::TooLarge(_)))
    ));
    drop(x);
}

/// `try_send` never waits: it reports a full queue, `writable` waits until the reader
/// drained some, and nothing is lost or reordered.
async fn try_send_reports_a_full_queue(a: Channel, b: Channel) {
    let msg = |i: u32| DatadToKeyd::Stats {
        request: i,
        peers: Vec::new(),
        done: true,
    };
    // A fresh socket's readiness is unknown until the reactor has looked at it.
    a.writable().await.unwrap();
    let mut sent = 0u32;
    while a.try_send(&msg(sent)).unwrap() {
        sent += 1;
        assert!(sent < 1_000_000, "the queue never filled");
    }
    assert!(sent > 0);
    // Full now: a writable() wait must not finish before the reader makes room.
    let early = tokio::time::timeout(std::time::Duration::from_millis(50), a.writable()).await;
    assert!(
        early.is_err(),
        "writable() returned while the queue was full"
    );
    for i in 0..sent {
        let got = b.recv::<DatadToKeyd>().await.unwrap();
        assert!(matches!(got.msg, DatadToKeyd::Stats { request, .. } if request == i));
    }
    a.writable().await.unwrap();
    assert!(a.try_send(&msg(sent)).unwrap());
    drop(b);
    let after = a.try_send(&msg(0));
    assert!(matches!(after, Err(IpcError::Closed)), "{after:?}");
}

#[tokio::test]
async fn seqpacket_try_send_reports_a_full_queue() {
    let (x, y) = seqpacket_pair().unwrap();
    try_send_reports_a_full_queue(Channel::from_fd(x).unwrap(), Channel::from_fd(y).unwrap()).await;
}

#[tokio::test]
async fn memory_try_send_reports_a_full_queue() {
    let (a, b) = Channel::memory_pair();
    try_send_reports_a_full_queue(a, b).await;
}

/// A peer that dies with our messages unread (a data plane killed by its seccomp filter
/// right after its start message arrived) still has its last words read: the kernel
/// reports ECONNRESET first, and the report it sent is queued behind it.
#[tokio::test]
async fn a_report_sent_before_dying_with_unread_messages_is_still_read() {
    let (ours, theirs) = seqpacket_pair().unwrap();
    let ours = Channel::from_fd(ours).unwrap();
    // We send two messages the peer never reads.
    for _ in 0..2 {
        ours.send(&KeydToDatad::Hello(Hello::new(Role::Keyd)), &[])
            .await
            .unwrap();
    }
    // The peer says why it fails, then its socket closes with our messages unread.
    let report = wg_ipc::failure_report("the sandbox refused a syscall");
    nix::sys::socket::send(
        theirs.as_raw_fd(),
        &report,
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    drop(theirs);
    match ours.recv::<DatadToKeyd>().await {
        Err(IpcError::PeerFailed(reason)) => assert_eq!(reason, "the sandbox refused a syscall"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ours.recv::<DatadToKeyd>().await,
        Err(IpcError::Closed)
    ));
}
