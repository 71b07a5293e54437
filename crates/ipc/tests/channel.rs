//! Every transport carries the same messages and descriptors; malformed input closes.
//! The datagram (`SOCK_SEQPACKET`) tests run where it exists (not macOS), the stream tests
//! everywhere, Linux included. A stream's hostile peer is played by writing raw bytes and
//! descriptors into the other end, framed by hand as the documented format says (a `u32`
//! little-endian length, then the message).
// The systems the crate under test builds for.
#![cfg(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "freebsd",
    target_os = "netbsd"
))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{IoSlice, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use proptest::prelude::*;
use wg_ipc::messages::{DatadToKeyd, Hello, KeydToDatad, Role};
use wg_ipc::{
    Channel, IpcError, MAX_FDS, MAX_MESSAGE_LEN, MessageError, StreamFrameError, encode,
    stream_pair,
};
use wg_wire::PublicKey;

/// Two connected stream channels.
fn stream_channels() -> (Channel, Channel) {
    let (x, y) = stream_pair().unwrap();
    (
        Channel::from_stream_fd(x).unwrap(),
        Channel::from_stream_fd(y).unwrap(),
    )
}

/// Two connected `SOCK_SEQPACKET` channels (every OS but macOS).
#[cfg(not(target_os = "macos"))]
fn seqpacket_channels() -> (Channel, Channel) {
    let (x, y) = wg_ipc::seqpacket_pair().unwrap();
    (Channel::from_fd(x).unwrap(), Channel::from_fd(y).unwrap())
}

/// A stream channel and the raw other end, blocking, for playing a hostile peer.
fn stream_and_raw() -> (Channel, UnixStream) {
    let (x, y) = stream_pair().unwrap();
    let raw = UnixStream::from(y);
    raw.set_nonblocking(false).unwrap();
    (Channel::from_stream_fd(x).unwrap(), raw)
}

/// `payload` framed as the stream format documents it.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Sends `bytes` with `fds` in one `sendmsg` on a raw socket.
fn send_raw(fd: RawFd, bytes: &[u8], fds: &[RawFd]) -> usize {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(fd, &[IoSlice::new(bytes)], cmsgs, MsgFlags::empty(), None).unwrap()
}

/// Bytes of a frame's length (the documented format): a receiver reads them before any of
/// the payload.
const LEN_PREFIX: usize = 4;

fn bulk(len: usize, tag: u8) -> DatadToKeyd {
    DatadToKeyd::Handshake {
        message: (0..len).map(|i| tag ^ (i as u8)).collect(),
        source: SocketAddr::from(([192, 0, 2, tag], 51820)),
    }
}

fn is_bulk(msg: &DatadToKeyd, len: usize, tag: u8) -> bool {
    matches!(msg, DatadToKeyd::Handshake { message, source }
        if message.len() == len
            && message.iter().enumerate().all(|(i, b)| *b == tag ^ (i as u8))
            && *source == SocketAddr::from(([192, 0, 2, tag], 51820)))
}

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

#[cfg(not(target_os = "macos"))]
#[tokio::test]
async fn seqpacket_carries_messages_and_fds() {
    let (a, b) = seqpacket_channels();
    exchange(a, b).await;
}

#[tokio::test]
async fn stream_carries_messages_and_fds() {
    let (a, b) = stream_channels();
    exchange(a, b).await;
}

#[tokio::test]
async fn the_systems_own_pair_carries_messages_and_fds() {
    let (x, y) = wg_ipc::pair().unwrap();
    exchange(Channel::from_fd(x).unwrap(), Channel::from_fd(y).unwrap()).await;
}

/// A channel handed to another process is read the way it was made: `from_fd` asks the
/// kernel, so a stream pair works through it on every system (what the daemon's workers
/// and a received keyd-datad channel go through), and a socket of another type is refused.
#[tokio::test]
async fn from_fd_takes_the_transport_of_the_socket_it_is_given() {
    let (x, y) = stream_pair().unwrap();
    exchange(Channel::from_fd(x).unwrap(), Channel::from_fd(y).unwrap()).await;
    let (d, _other) = std::os::unix::net::UnixDatagram::pair().unwrap();
    assert!(Channel::from_fd(OwnedFd::from(d)).is_err());
}

#[tokio::test]
async fn memory_pair_behaves_the_same() {
    let (a, b) = Channel::memory_pair();
    exchange(a, b).await;
}

/// Descriptors stay with their own message even when several messages, some with
/// descriptors and some without, wait in the socket together (a greedy stream read would
/// hand the next message's descriptors to the current one).
async fn descriptors_stay_with_their_message(a: Channel, b: Channel) {
    let files: Vec<(UnixStream, UnixStream)> =
        (0..4).map(|_| UnixStream::pair().unwrap()).collect();
    let plan: [&[usize]; 5] = [&[], &[0], &[], &[1, 2], &[3]];
    for (i, which) in plan.iter().enumerate() {
        let fds: Vec<_> = which.iter().map(|&k| files[k].1.as_fd()).collect();
        a.send(&bulk(100 + i, i as u8), &fds).await.unwrap();
    }
    for (i, which) in plan.iter().enumerate() {
        let got = b.recv::<DatadToKeyd>().await.unwrap();
        assert!(is_bulk(&got.msg, 100 + i, i as u8), "message {i}");
        assert_eq!(got.fds.len(), which.len(), "descriptors of message {i}");
        // Each is the descriptor that was sent: a byte written into its partner shows up.
        for (fd, &k) in got.fds.into_iter().zip(which.iter()) {
            let mut partner = files[k].0.try_clone().unwrap();
            partner.write_all(&[k as u8]).unwrap();
            let mut passed = UnixStream::from(fd);
            let mut byte = [0u8];
            passed.read_exact(&mut byte).unwrap();
            assert_eq!(byte, [k as u8]);
        }
    }
}

#[cfg(not(target_os = "macos"))]
#[tokio::test]
async fn seqpacket_descriptors_stay_with_their_message() {
    let (a, b) = seqpacket_channels();
    descriptors_stay_with_their_message(a, b).await;
}

#[tokio::test]
async fn stream_descriptors_stay_with_their_message() {
    let (a, b) = stream_channels();
    descriptors_stay_with_their_message(a, b).await;
}

#[cfg(not(target_os = "macos"))]
#[tokio::test]
async fn garbage_and_oversized_datagrams_are_errors() {
    let (x, y) = wg_ipc::seqpacket_pair().unwrap();
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

/// More than [`MAX_FDS`] descriptors with one message end the channel, and none of them
/// is handed out.
#[cfg(not(target_os = "macos"))]
#[tokio::test]
async fn seqpacket_too_many_descriptors_are_refused() {
    let (x, y) = wg_ipc::seqpacket_pair().unwrap();
    let chan = Channel::from_fd(y).unwrap();
    let file = UnixStream::pair().unwrap().0;
    let fds = vec![file.as_raw_fd(); MAX_FDS + 1];
    send_raw(
        x.as_raw_fd(),
        &encode(&KeydToDatad::ClearPeers).unwrap(),
        &fds,
    );
    let got = chan.recv::<KeydToDatad>().await;
    assert!(matches!(got, Err(IpcError::BadFds)), "{got:?}");
}

#[tokio::test]
async fn stream_too_many_descriptors_are_refused() {
    let (chan, raw) = stream_and_raw();
    let file = UnixStream::pair().unwrap().0;
    let fds = vec![file.as_raw_fd(); MAX_FDS + 1];
    let frame = framed(&encode(&KeydToDatad::ClearPeers).unwrap());
    send_raw(raw.as_raw_fd(), &frame, &fds);
    let got = chan.recv::<KeydToDatad>().await;
    assert!(matches!(got, Err(IpcError::BadFds)), "{got:?}");
}

/// The channel is finished after an error: later receives fail, and the peer reads the
/// end of the stream (the socket was shut down).
async fn assert_closed_after_error(chan: &Channel, mut raw: UnixStream) {
    assert!(matches!(
        chan.recv::<KeydToDatad>().await,
        Err(IpcError::Closed)
    ));
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_stream_frame_that_does_not_decode_ends_the_channel() {
    let (chan, mut raw) = stream_and_raw();
    raw.write_all(&framed(&[0xff, 0xff, 0xff])).unwrap();
    let got = chan.recv::<KeydToDatad>().await;
    assert!(
        matches!(got, Err(IpcError::Message(MessageError::Decode(_)))),
        "{got:?}"
    );
    assert_closed_after_error(&chan, raw).await;
}

/// An over-long length is refused from its 4 bytes alone: the receive fails without a
/// byte of the announced payload ever being written.
#[tokio::test]
async fn an_over_long_stream_length_is_refused_before_its_payload() {
    for len in [MAX_MESSAGE_LEN as u32 + 1, u32::MAX] {
        let (chan, mut raw) = stream_and_raw();
        raw.write_all(&len.to_le_bytes()).unwrap();
        let got = chan.recv::<KeydToDatad>().await;
        assert!(
            matches!(got, Err(IpcError::Message(MessageError::TooLarge(n))) if n == len as usize),
            "{got:?}"
        );
        assert_closed_after_error(&chan, raw).await;
    }
    // The longest allowed length is accepted.
    let (chan, mut raw) = stream_and_raw();
    let msg = bulk(MAX_MESSAGE_LEN - 64, 9);
    let payload = encode(&msg).unwrap();
    assert!(payload.len() <= MAX_MESSAGE_LEN);
    let writer = std::thread::spawn(move || raw.write_all(&framed(&payload)).unwrap());
    let got = chan.recv::<DatadToKeyd>().await.unwrap();
    assert!(is_bulk(&got.msg, MAX_MESSAGE_LEN - 64, 9));
    writer.join().unwrap();
}

#[tokio::test]
async fn a_stream_cut_inside_a_message_is_truncated() {
    // Inside the length.
    let (chan, mut raw) = stream_and_raw();
    raw.write_all(&[10, 0]).unwrap();
    drop(raw);
    let got = chan.recv::<KeydToDatad>().await;
    assert!(
        matches!(
            got,
            Err(IpcError::Framing(StreamFrameError::Truncated {
                have: 2,
                need: 4
            }))
        ),
        "{got:?}"
    );
    // Inside the payload, after a whole message.
    let (chan, mut raw) = stream_and_raw();
    raw.write_all(&framed(&encode(&KeydToDatad::ClearPeers).unwrap()))
        .unwrap();
    raw.write_all(&[10, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(raw);
    assert!(matches!(
        chan.recv::<KeydToDatad>().await.unwrap().msg,
        KeydToDatad::ClearPeers
    ));
    let got = chan.recv::<KeydToDatad>().await;
    assert!(
        matches!(
            got,
            Err(IpcError::Framing(StreamFrameError::Truncated {
                have: 7,
                need: 14
            }))
        ),
        "{got:?}"
    );
    // Between messages: a clean end.
    let (chan, raw) = stream_and_raw();
    drop(raw);
    assert!(matches!(
        chan.recv::<KeydToDatad>().await,
        Err(IpcError::Closed)
    ));
}

/// Descriptors belong to the `sendmsg` that writes a frame's first byte: descriptors that
/// arrive later in a frame, or with a message that then never completes, end the channel.
/// (Descriptors sent on the 2nd to 4th byte may be read together with the first on Linux,
/// which joins a stream's writes in one read; they are then still this message's.)
#[tokio::test]
async fn stream_descriptors_off_a_frames_first_byte_end_the_channel() {
    let file = UnixStream::pair().unwrap().0;
    let frame = framed(&encode(&KeydToDatad::ClearPeers).unwrap());
    for split in LEN_PREFIX..frame.len() {
        let (chan, mut raw) = stream_and_raw();
        raw.write_all(&frame[..split]).unwrap();
        send_raw(raw.as_raw_fd(), &frame[split..], &[file.as_raw_fd()]);
        let got = chan.recv::<KeydToDatad>().await;
        assert!(
            matches!(got, Err(IpcError::BadFds)),
            "split {split}: {got:?}"
        );
        assert_closed_after_error(&chan, raw).await;
    }
    // With the first byte, then the stream ends mid-message: not delivered.
    let (chan, raw) = stream_and_raw();
    send_raw(raw.as_raw_fd(), &frame[..3], &[file.as_raw_fd()]);
    drop(raw);
    let got = chan.recv::<KeydToDatad>().await;
    assert!(
        matches!(
            got,
            Err(IpcError::Framing(StreamFrameError::Truncated { .. }))
        ),
        "{got:?}"
    );
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
    // The sender keeps waiting for room meanwhile (on a stream, that finishes a message
    // the socket took only in part).
    let read_all = async {
        for i in 0..sent {
            let got = b.recv::<DatadToKeyd>().await.unwrap();
            assert!(matches!(got.msg, DatadToKeyd::Stats { request, .. } if request == i));
        }
    };
    let ((), room) = tokio::join!(read_all, a.writable());
    room.unwrap();
    assert!(a.try_send(&msg(sent)).unwrap());
    drop(b);
    let after = a.try_send(&msg(0));
    assert!(matches!(after, Err(IpcError::Closed)), "{after:?}");
}

#[cfg(not(target_os = "macos"))]
#[tokio::test]
async fn seqpacket_try_send_reports_a_full_queue() {
    let (a, b) = seqpacket_channels();
    try_send_reports_a_full_queue(a, b).await;
}

#[tokio::test]
async fn stream_try_send_reports_a_full_queue() {
    let (a, b) = stream_channels();
    try_send_reports_a_full_queue(a, b).await;
}

#[tokio::test]
async fn memory_try_send_reports_a_full_queue() {
    let (a, b) = Channel::memory_pair();
    try_send_reports_a_full_queue(a, b).await;
}

/// Large messages from two senders at once, more than the socket holds, with `try_send`
/// in between: the socket takes frames in parts, and each part is finished before another
/// frame starts, so every message arrives whole and each sender's stay in order.
#[tokio::test]
async fn stream_partial_writes_never_interleave() {
    let (a, b) = stream_channels();
    const EACH: usize = 40;
    let sender = |tag_base: u8| {
        let a = &a;
        async move {
            for i in 0..EACH {
                let len = 20_000 + 997 * i;
                a.send(&bulk(len, tag_base + i as u8), &[]).await.unwrap();
                if i % 5 == 0 {
                    // Committed or not sent at all; never half a message lost.
                    let _ = a.try_send(&bulk(7, 200)).unwrap();
                }
            }
        }
    };
    let receiver = async {
        let mut next = [0usize; 2];
        let mut small = 0;
        while next != [EACH, EACH] {
            let got = b.recv::<DatadToKeyd>().await.unwrap();
            if is_bulk(&got.msg, 7, 200) {
                small += 1;
                continue;
            }
            let which = (0..2)
                .find(|&s| {
                    let i = next[s];
                    i < EACH && is_bulk(&got.msg, 20_000 + 997 * i, (s as u8) * 100 + i as u8)
                })
                .expect("a message out of order or damaged");
            next[which] += 1;
            // A slow reader, so the socket fills up.
            tokio::task::yield_now().await;
        }
        small
    };
    let ((), (), small) = tokio::join!(sender(0), sender(100), receiver);
    // The small ones sent after the last large ones may still be in the socket.
    assert!(small <= 2 * EACH / 5);
}

/// A peer that dies with our messages unread (a data plane killed by its seccomp filter
/// right after its start message arrived) still has its last words read: the kernel
/// reports ECONNRESET first, and the report it sent is queued behind it.
#[cfg(not(target_os = "macos"))]
#[tokio::test]
async fn a_report_sent_before_dying_with_unread_messages_is_still_read() {
    let (ours, theirs) = wg_ipc::seqpacket_pair().unwrap();
    last_words(Channel::from_fd(ours).unwrap(), theirs, |r| r.to_vec()).await;
}

#[tokio::test]
async fn a_report_framed_on_a_stream_before_dying_is_still_read() {
    let (ours, theirs) = stream_pair().unwrap();
    last_words(Channel::from_stream_fd(ours).unwrap(), theirs, framed).await;
}

async fn last_words(ours: Channel, theirs: OwnedFd, frame: fn(&[u8]) -> Vec<u8>) {
    // We send two messages the peer never reads.
    for _ in 0..2 {
        ours.send(&KeydToDatad::Hello(Hello::new(Role::Keyd)), &[])
            .await
            .unwrap();
    }
    // The peer says why it fails, then its socket closes with our messages unread.
    let report = frame(&wg_ipc::failure_report("the sandbox refused a syscall"));
    send_raw(theirs.as_raw_fd(), &report, &[]);
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Messages written in arbitrary pieces (any split, one byte at a time included) arrive
    /// whole and in order, then the end of the stream closes the channel cleanly.
    #[test]
    fn stream_messages_survive_arbitrary_write_splits(
        lens in prop::collection::vec(0usize..3000, 1..12),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let rt = runtime();
        let _in_runtime = rt.enter();
        let (chan, mut raw) = stream_and_raw();
        let mut stream = Vec::new();
        for (i, len) in lens.iter().enumerate() {
            stream.extend(framed(&encode(&bulk(*len, i as u8)).unwrap()));
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.extend([0, stream.len()]);
        cuts.sort_unstable();
        let writer = std::thread::spawn(move || {
            for w in cuts.windows(2) {
                raw.write_all(&stream[w[0]..w[1]]).unwrap();
            }
        });
        rt.block_on(async {
            for (i, len) in lens.iter().enumerate() {
                let got = chan.recv::<DatadToKeyd>().await.unwrap();
                assert!(is_bulk(&got.msg, *len, i as u8), "message {i}");
                assert!(got.fds.is_empty());
            }
            assert!(matches!(chan.recv::<DatadToKeyd>().await, Err(IpcError::Closed)));
        });
        writer.join().unwrap();
    }

    /// A hostile peer writing arbitrary bytes: every receive either yields a message that
    /// decoded completely or fails, the channel fails at the latest when the stream ends,
    /// and after the first failure it stays closed.
    #[test]
    fn a_stream_of_garbage_only_ever_ends_the_channel(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        valid_first in any::<bool>(),
    ) {
        let rt = runtime();
        let _in_runtime = rt.enter();
        let (chan, mut raw) = stream_and_raw();
        let mut stream = Vec::new();
        if valid_first {
            stream.extend(framed(&encode(&KeydToDatad::ClearPeers).unwrap()));
        }
        stream.extend(&bytes);
        let total = stream.len();
        // The channel may shut the socket down before everything is written.
        let writer = std::thread::spawn(move || { let _ = raw.write_all(&stream); });
        rt.block_on(async {
            let mut messages = 0usize;
            while chan.recv::<KeydToDatad>().await.is_ok() {
                messages += 1;
                // Each message takes at least its 4 length bytes and 1 of payload.
                assert!(messages * 5 <= total);
            }
            assert!(!valid_first || messages >= 1);
            assert!(matches!(chan.recv::<KeydToDatad>().await, Err(IpcError::Closed)));
        });
        writer.join().unwrap();
    }
}
