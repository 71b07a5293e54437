//! The data plane's event loop: one task that waits on the TUN device, the UDP sockets, the
//! key process, the monitor and the earliest timer, and feeds each event to the sans-IO
//! router and timers.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use wg_cookie::{CookieChecker, Verdict};
use wg_ipc::messages::{
    DatadToKeyd, DatadToMonitor, Hello, KeydToDatad, MonitorToDatad, PeerStats, PeerUpdate, Role,
    SessionKeys,
};
use wg_ipc::{Channel, IpcError, Received};
use wg_router::{HEADROOM, InboundKind, NewSession, Outbound, PeerId, Router};
use wg_timers::{PeerTimers, TimerAction};
use wg_tun::AsyncTun;
use wg_wire::{
    CookieReply, MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_TRANSPORT,
    PublicKey, SessionKey, message_type,
};

use crate::batch::{MAX_PACKET, OutBatch, SLOT};
use crate::crypto::CryptoPool;
use crate::ratelimit::RateLimiter;
use crate::udp;
use crate::{DatadError, Exit, Startup};
/// Handshake messages per second above which we consider ourselves under load and demand
/// cookies (MAC2). wireguard-go measures its queue depth instead; a rate over a one-second
/// window is the same signal without a queue of our own.
const UNDER_LOAD_RATE: u32 = 128;
/// Once under load, stay so for this long (wireguard-go: 1 s).
const UNDER_LOAD_AFTER: Duration = Duration::from_secs(1);
/// Up to this many peers the earliest timer deadline is recomputed exactly every time.
const EXACT_DEADLINE_PEERS: usize = 64;
/// With more peers, how stale the cached earliest deadline may get while events arrive.
const DEADLINE_RESCAN: Duration = Duration::from_millis(50);

/// The earliest timer deadline, cached for interfaces with many peers.
#[derive(Debug, Default)]
struct DeadlineCache {
    earliest: Option<Instant>,
    scanned_at: Option<Instant>,
    events_since_scan: bool,
}

/// UDP runs (each up to 64 datagrams) received per wakeup before the loop looks at its
/// other sources again.
const BATCH: usize = 16;
/// TUN reads per wakeup, at most.
const TUN_READS: usize = 64;
/// Segments sent per wakeup from the TUN side before the loop looks elsewhere.
const TUN_SEGMENTS: usize = 256;
/// Handshake messages waiting for keyd beyond which new ones are dropped (wireguard-go's
/// handshake queue holds 1024 as well).
const MAX_KEYD_BACKLOG: usize = 1024;
/// Peers per stats message, keeping each well under the IPC size limit.
const STATS_CHUNK: usize = wg_ipc::messages::STATS_PER_MESSAGE;

/// Handshake load over one-second windows.
#[derive(Debug, Default)]
struct LoadMeter {
    window_start: Option<Instant>,
    count: u32,
    under_load_until: Option<Instant>,
}

impl LoadMeter {
    fn record(&mut self, now: Instant) {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {
                self.count += 1;
            }
            _ => {
                self.window_start = Some(now);
                self.count = 1;
            }
        }
        if self.count > UNDER_LOAD_RATE {
            self.under_load_until = Some(now + UNDER_LOAD_AFTER);
        }
    }

    fn under_load(&self, now: Instant) -> bool {
        self.under_load_until.is_some_and(|until| now < until)
    }
}

/// What the data plane keeps per peer besides the router's state.
#[derive(Debug)]
struct PeerSlot {
    public_key: PublicKey,
    timers: PeerTimers,
    /// Sender index of the last handshake message we sent: a cookie reply must name it.
    last_handshake_index: Option<u32>,
}

/// Everything the event loop waits on.
struct Io {
    tun: AsyncTun,
    udp4: UdpSocket,
    udp6: Option<UdpSocket>,
    keyd: Channel,
    monitor: Option<Channel>,
}

/// One event, with owned data only, so handling it can borrow everything mutably.
enum Event {
    Tun(std::io::Result<usize>),
    /// A UDP socket became readable.
    Udp(Family, std::io::Result<()>),
    Keyd(Result<Received<KeydToDatad>, IpcError>),
    /// keyd's socket can take the queued messages again.
    KeydWritable(Result<(), IpcError>),
    Monitor(Result<Received<MonitorToDatad>, IpcError>),
    Timer,
}

struct Daemon {
    io: Io,
    router: Router,
    by_key: HashMap<PublicKey, PeerId>,
    slots: HashMap<PeerId, PeerSlot>,
    by_handshake_index: HashMap<u32, PeerId>,
    checker: Option<CookieChecker>,
    limiter: RateLimiter,
    load: LoadMeter,
    /// One TUN read: with a virtio-net header, a super-packet of up to 64 KiB.
    tun_read: Vec<u8>,
    /// Whether TUN packets carry a virtio-net header (and may be super-packets).
    tun_vnet: bool,
    /// Packets read from the TUN, waiting to be sealed and sent.
    out: OutBatch,
    /// Per packet of `out`: its seal job, then the sealed length, then where it goes.
    seal_jobs: Vec<Option<wg_router::SealJob>>,
    routes: Vec<Option<(PeerId, SocketAddr)>>,
    crypto_lens: Vec<Option<usize>>,
    sealed: Vec<Sealed>,
    /// Per datagram of a received run: its open job.
    open_jobs: Vec<Option<wg_router::OpenJob>>,
    /// Helper threads for the AEAD work of a batch.
    crypto: CryptoPool,
    /// Whether sends may use `UDP_SEGMENT`.
    udp_gso: bool,
    /// One received UDP run (with `UDP_GRO`, up to 64 KiB of datagrams).
    rx_buf: Vec<u8>,
    rx_cmsg: Vec<u8>,
    /// Decrypted TCP segments coalesced before the TUN write (virtio-net header only).
    gro: wg_offload::Gro,
    /// Messages for keyd not yet taken by its socket: the loop never waits on keyd (which
    /// may itself be waiting for us to read), it keeps serving and sends when keyd reads.
    to_keyd: VecDeque<DatadToKeyd>,
    /// A peer update whose allowed IPs are still arriving in chunks: applied whole once the
    /// last chunk is in, so routing never sees half of it.
    partial_peer: Option<PeerUpdate>,
    rng: rand::rngs::StdRng,
    deadline_cache: DeadlineCache,
}

/// A sealed packet of the outbound batch.
#[derive(Debug, Clone, Copy)]
struct Sealed {
    slot: usize,
    len: usize,
    peer: PeerId,
    endpoint: SocketAddr,
}

async fn readable(socket: Option<&UdpSocket>) -> std::io::Result<()> {
    match socket {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

/// Waits until keyd's socket has room, if there is something to send.
async fn keyd_writable(keyd: &Channel, waiting: bool) -> Result<(), IpcError> {
    if waiting {
        keyd.writable().await
    } else {
        std::future::pending().await
    }
}

async fn recv_monitor(monitor: Option<&Channel>) -> Result<Received<MonitorToDatad>, IpcError> {
    match monitor {
        Some(m) => m.recv().await,
        None => std::future::pending().await,
    }
}

fn to_tokio(socket: std::net::UdpSocket) -> std::io::Result<UdpSocket> {
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Wall-clock time of an `Instant` in the past, as Unix seconds and nanoseconds.
fn unix_time(at: Instant, now: Instant) -> Option<(u64, u32)> {
    let wall = SystemTime::now().checked_sub(now.saturating_duration_since(at))?;
    let since = wall.duration_since(UNIX_EPOCH).ok()?;
    Some((since.as_secs(), since.subsec_nanos()))
}

/// Test builds only (feature `test-hooks`): with `WG_RS_TEST_LIE_INTERFACE_GONE=PATH`, where
/// PATH is a FIFO a test holds open with one byte in it, the data plane that reads the byte
/// (before its sandbox is installed) tells the monitor right after start that the interface
/// is gone although it is not. The byte is there once, so one data plane of the daemon lies
/// and its replacements do not. Only a read-only open and a read: a starting data plane
/// runs under the spawner's filter, which allows nothing that writes files.
#[cfg(feature = "test-hooks")]
fn lie_about_the_interface_requested() -> bool {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = std::env::var_os("WG_RS_TEST_LIE_INTERFACE_GONE") else {
        return false;
    };
    let mut byte = [0u8; 1];
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .and_then(|mut fifo| fifo.read(&mut byte))
        .is_ok_and(|n| n == 1)
}

/// Runs the data plane until the interface disappears or a peer process fails.
pub async fn serve(startup: Startup) -> Result<Exit, DatadError> {
    let tun = wg_tun::Tun::from_fd(startup.tun)
        .and_then(AsyncTun::new)
        .map_err(|e| DatadError::Tun(std::io::Error::other(e)))?;
    let tun_vnet = tun.get_ref().vnet_hdr();
    // Threads are made before the sandbox, which forbids making them.
    let crypto = CryptoPool::new(startup.crypto_threads)?;
    tracing::debug!(
        tun_vnet,
        udp_gso = startup.udp_gso,
        "data plane I/O: virtio-net header on the TUN, UDP segmentation"
    );
    let io = Io {
        tun,
        udp4: to_tokio(startup.udp4)?,
        udp6: startup.udp6.map(to_tokio).transpose()?,
        keyd: startup.keyd,
        monitor: startup.monitor,
    };
    #[cfg(feature = "test-hooks")]
    let lie = lie_about_the_interface_requested();
    if let Some(lockdown) = startup.lockdown {
        lockdown().map_err(DatadError::Sandbox)?;
    }
    io.keyd
        .send(&DatadToKeyd::Hello(Hello::new(Role::Datad)), &[])
        .await
        .map_err(DatadError::Keyd)?;
    #[cfg(feature = "test-hooks")]
    if lie && let Some(m) = &io.monitor {
        tracing::warn!("test hook: telling the monitor the interface is gone although it is not");
        m.send(&DatadToMonitor::InterfaceGone, &[])
            .await
            .map_err(DatadError::Monitor)?;
    }
    let mut daemon = Daemon {
        io,
        router: Router::new(),
        by_key: HashMap::new(),
        slots: HashMap::new(),
        by_handshake_index: HashMap::new(),
        checker: None,
        limiter: RateLimiter::default(),
        load: LoadMeter::default(),
        tun_read: vec![0; wg_tun::VNET_HDR_LEN + MAX_PACKET],
        tun_vnet,
        out: OutBatch::new(),
        seal_jobs: Vec::with_capacity(crate::batch::SLOTS),
        routes: Vec::with_capacity(crate::batch::SLOTS),
        crypto_lens: Vec::with_capacity(crate::batch::SLOTS),
        sealed: Vec::with_capacity(crate::batch::SLOTS),
        open_jobs: Vec::with_capacity(crate::batch::SLOTS),
        crypto,
        udp_gso: startup.udp_gso,
        rx_buf: vec![0; MAX_PACKET],
        rx_cmsg: udp::gro_cmsg_buffer(),
        gro: wg_offload::Gro::new(),
        to_keyd: VecDeque::new(),
        partial_peer: None,
        rng: rand::make_rng(),
        deadline_cache: DeadlineCache::default(),
    };
    daemon.run().await
}

impl Daemon {
    async fn run(&mut self) -> Result<Exit, DatadError> {
        // One timer for the whole loop, moved only when the earliest deadline comes
        // *earlier* than where it is armed. Every packet re-arms some peer timer a few
        // seconds ahead; re-registering a tokio timer earlier than the driver's next wake
        // costs an eventfd write and an extra epoll round per packet, while waking up
        // early and finding nothing due costs one scan.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            if let Some(deadline) = self.next_deadline(Instant::now())
                && armed.is_none_or(|at| deadline < at)
            {
                timer.as_mut().reset(deadline.into());
                armed = Some(deadline);
            }
            let keyd_backlog = !self.to_keyd.is_empty();
            let event = {
                let io = &self.io;
                tokio::select! {
                    r = io.tun.recv(&mut self.tun_read) => Event::Tun(r),
                    r = io.udp4.readable() => Event::Udp(Family::V4, r),
                    r = readable(io.udp6.as_ref()) => Event::Udp(Family::V6, r),
                    m = io.keyd.recv::<KeydToDatad>() => Event::Keyd(m),
                    r = keyd_writable(&io.keyd, keyd_backlog) => Event::KeydWritable(r),
                    m = recv_monitor(io.monitor.as_ref()) => Event::Monitor(m),
                    () = &mut timer, if armed.is_some() => Event::Timer,
                }
            };
            let now = Instant::now();
            self.deadline_cache.events_since_scan = true;
            if let Event::Timer = event {
                // Timers fired: the cached earliest deadline is consumed.
                self.deadline_cache.scanned_at = None;
                armed = None;
            }
            match event {
                Event::Tun(Ok(len)) => self.on_tun_readable(len, now).await,
                Event::Tun(Err(e)) => {
                    if self.io.tun.get_ref().is_deleted() || wg_tun::is_interface_gone(&e) {
                        tracing::info!("interface deleted; data plane exiting");
                        if let Some(m) = &self.io.monitor {
                            let _ = m.send(&DatadToMonitor::InterfaceGone, &[]).await;
                        }
                        return Ok(Exit::InterfaceGone);
                    }
                    return Err(DatadError::Tun(e));
                }
                Event::Udp(family, Ok(())) => self.on_udp_readable(family, now).await,
                Event::Udp(_, Err(e)) => {
                    // ICMP errors surface here (ECONNREFUSED and friends); not fatal.
                    tracing::debug!("UDP receive error: {e}");
                }
                Event::Keyd(Ok(m)) => self.on_keyd(m.msg, now).await?,
                Event::Keyd(Err(e)) | Event::KeydWritable(Err(e)) => {
                    return Err(DatadError::Keyd(e));
                }
                Event::KeydWritable(Ok(())) => {}
                Event::Monitor(Ok(m)) => self.on_monitor(m)?,
                Event::Monitor(Err(e)) => return Err(DatadError::Monitor(e)),
                Event::Timer => self.on_timers(now).await,
            }
            self.flush_to_keyd()?;
        }
    }

    /// Handles the packet just read from the TUN device and those queued behind it, in
    /// batches: split super-packets into wire-sized segments, route and seal them all, then
    /// send each run to one endpoint with one system call. One wakeup serves up to
    /// [`TUN_READS`] reads or [`TUN_SEGMENTS`] segments, whichever comes first, so the
    /// other direction gets its turn.
    async fn on_tun_readable(&mut self, first_len: usize, now: Instant) {
        self.take_tun_packet(first_len, now).await;
        let (mut reads, mut segments) = (1, 0);
        loop {
            if !self.out.has_room_for_a_read() {
                segments += self.out.len();
                self.send_out_batch(now).await;
            }
            if reads >= TUN_READS || segments >= TUN_SEGMENTS {
                break;
            }
            match self.io.tun.try_recv(&mut self.tun_read) {
                Ok(n) => self.take_tun_packet(n, now).await,
                // WouldBlock, or an error the next wait reports properly.
                Err(_) => break,
            }
            reads += 1;
        }
        self.send_out_batch(now).await;
    }

    /// Moves one TUN read into the outbound batch, split into segments if it is a
    /// super-packet. One with more segments than the batch has room for (a tiny MSS) first
    /// has the batch sent, and grown if need be.
    async fn take_tun_packet(&mut self, len: usize, now: Instant) {
        if self.tun_vnet {
            for attempt in 0..2 {
                let before = self.out.len();
                let read = self.tun_read.get(..len).unwrap_or_default();
                match wg_offload::split(read, &mut self.out) {
                    Ok(_) => return,
                    Err(wg_offload::OffloadError::SinkFull { segments, .. }) if attempt == 0 => {
                        self.out.truncate(before);
                        self.send_out_batch(now).await;
                        self.out.make_room_for(segments);
                    }
                    Err(e) => {
                        tracing::debug!("TUN packet dropped: {e}");
                        self.out.truncate(before);
                        return;
                    }
                }
            }
            return;
        }
        let Some(read) = self.tun_read.get(..len) else {
            return;
        };
        if let Some(dst) = wg_offload::SegmentSink::next_segment(&mut self.out, len) {
            dst.copy_from_slice(read);
        }
    }

    /// Routes and seals every packet of the outbound batch, then sends them.
    async fn send_out_batch(&mut self, now: Instant) {
        self.seal_jobs.clear();
        self.routes.clear();
        for slot in 0..self.out.len() {
            let (job, route) = match self.router.route_outbound(self.out.plaintext(slot), now) {
                Outbound::Send {
                    peer,
                    endpoint,
                    job,
                    rekey,
                } => {
                    if rekey {
                        self.want_handshake(peer, now);
                    }
                    (Some(job), Some((peer, endpoint)))
                }
                Outbound::Staged { peer } => {
                    self.want_handshake(peer, now);
                    (None, None)
                }
                Outbound::Dropped(reason) => {
                    tracing::trace!("outbound packet dropped: {reason}");
                    (None, None)
                }
            };
            self.seal_jobs.push(job);
            self.routes.push(route);
        }
        self.crypto_lens.clear();
        self.crypto_lens.resize(self.seal_jobs.len(), None);
        self.crypto.run(
            self.out.slots_mut(),
            SLOT,
            &self.seal_jobs,
            &mut self.crypto_lens,
            |job, slot| job.seal(slot).ok(),
        );
        self.sealed.clear();
        for (slot, (len, route)) in self.crypto_lens.iter().zip(&self.routes).enumerate() {
            if let (Some(len), Some((peer, endpoint))) = (*len, *route) {
                self.sealed.push(Sealed {
                    slot,
                    len,
                    peer,
                    endpoint,
                });
            }
        }
        self.seal_jobs.clear();
        let mut start = 0;
        while start < self.sealed.len() {
            let end = self.run_end(start);
            self.send_sealed(start, end, now).await;
            start = end;
        }
        self.out.clear();
    }

    /// End of the run of sealed packets starting at `start` that one segmented send can
    /// carry: same endpoint, same length, except that the last may be shorter.
    fn run_end(&self, start: usize) -> usize {
        let Some(first) = self.sealed.get(start) else {
            return start;
        };
        let limit = if self.udp_gso {
            udp::MAX_GSO_SEGMENTS
        } else {
            1
        };
        let mut end = start + 1;
        let mut bytes = first.len;
        while let Some(next) = self.sealed.get(end) {
            if end - start >= limit
                || next.endpoint != first.endpoint
                || next.len > first.len
                || bytes + next.len > udp::MAX_GSO_BYTES
            {
                break;
            }
            bytes += next.len;
            end += 1;
            if next.len < first.len {
                break;
            }
        }
        end
    }

    /// Sends `sealed[start..end]`, one run to one endpoint.
    async fn send_sealed(&mut self, start: usize, end: usize, now: Instant) {
        let Some(run) = self.sealed.get(start..end) else {
            return;
        };
        let Some(first) = run.first().copied() else {
            return;
        };
        let socket = match first.endpoint {
            SocketAddr::V4(_) => Some(&self.io.udp4),
            SocketAddr::V6(_) => self.io.udp6.as_ref(),
        };
        let Some(socket) = socket else {
            tracing::debug!("no IPv6 socket for {}", first.endpoint);
            return;
        };
        let mut iov = [IoSlice::new(&[]); udp::MAX_GSO_SEGMENTS];
        for (dst, sealed) in iov.iter_mut().zip(run) {
            *dst = IoSlice::new(self.out.message(sealed.slot, sealed.len));
        }
        let iov = iov.get(..run.len()).unwrap_or_default();
        match udp::send_run(socket, first.endpoint, iov, first.len, self.udp_gso).await {
            Ok(refused) => {
                if refused {
                    self.udp_gso = false;
                }
                for i in start..end {
                    if let Some(sealed) = self.sealed.get(i).copied() {
                        self.sent_transport(sealed.peer, sealed.len, true, now);
                    }
                }
            }
            Err(e) => tracing::debug!("send to {} failed: {e}", first.endpoint),
        }
    }

    /// Receives what is queued on a UDP socket, run by run (a run is up to 64 KiB of
    /// datagrams from one source with `UDP_GRO`), then writes the decrypted packets out.
    async fn on_udp_readable(&mut self, family: Family, now: Instant) {
        let mut buf = std::mem::take(&mut self.rx_buf);
        let mut cmsg = std::mem::take(&mut self.rx_cmsg);
        for _ in 0..BATCH {
            let socket = match family {
                Family::V4 => Some(&self.io.udp4),
                Family::V6 => self.io.udp6.as_ref(),
            };
            let Some(socket) = socket else { break };
            let run = match udp::try_recv_run(socket, &mut buf, &mut cmsg) {
                Ok(run) => run,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        // ICMP errors surface here (ECONNREFUSED and friends); not fatal.
                        tracing::debug!("UDP receive error: {e}");
                    }
                    break;
                }
            };
            let received = buf.get_mut(..run.len).unwrap_or_default();
            self.on_run(received, run.stride, run.source, now).await;
        }
        self.rx_buf = buf;
        self.rx_cmsg = cmsg;
        self.flush_gro();
    }

    /// Handles one received run: plans every transport message against the keypairs and
    /// replay windows, decrypts them (spread over the crypto threads), then finishes each
    /// in order, with the other message types handled in their place.
    async fn on_run(&mut self, run: &mut [u8], stride: usize, src: SocketAddr, now: Instant) {
        let stride = stride.max(1);
        let mut jobs = std::mem::take(&mut self.open_jobs);
        jobs.clear();
        for datagram in run.chunks(stride) {
            let job = if message_type(datagram) == Ok(MESSAGE_TRANSPORT) {
                self.router
                    .plan_inbound(datagram, now)
                    .map_err(|reason| tracing::trace!("transport from {src} dropped: {reason}"))
                    .ok()
            } else {
                None
            };
            jobs.push(job);
        }
        let mut lens = std::mem::take(&mut self.crypto_lens);
        lens.clear();
        lens.resize(jobs.len(), None);
        self.crypto
            .run(run, stride, &jobs, &mut lens, |job, d| job.open(d).ok());
        for ((datagram, job), opened) in run.chunks_mut(stride).zip(&jobs).zip(&lens) {
            if message_type(datagram) != Ok(MESSAGE_TRANSPORT) {
                self.on_datagram(datagram, src, now).await;
            } else if let (Some(job), Some(n)) = (job, *opened) {
                self.on_transport(job, datagram, n, src, now).await;
            } else if job.is_some() {
                tracing::trace!("transport from {src} failed authentication");
            }
        }
        jobs.clear();
        self.open_jobs = jobs;
        self.crypto_lens = lens;
    }

    /// Writes the coalesced packets to the TUN device.
    fn flush_gro(&mut self) {
        let tun = self.io.tun.get_ref();
        self.gro.flush(|packet| {
            if let Err(e) = tun.write(packet) {
                tracing::debug!("TUN write failed: {e}");
            }
        });
    }

    /// The earliest timer deadline of any peer. With few peers it is computed exactly
    /// each time; with many, the scan happens at most every [`DEADLINE_RESCAN`] while
    /// events keep arriving (so a timer armed by an event fires at most that late), and
    /// never on the per-packet path.
    fn next_deadline(&mut self, now: Instant) -> Option<Instant> {
        let scan = |slots: &HashMap<PeerId, PeerSlot>| {
            slots
                .values()
                .filter_map(|s| s.timers.next_deadline())
                .min()
        };
        if self.slots.len() <= EXACT_DEADLINE_PEERS {
            return scan(&self.slots);
        }
        let cache = &mut self.deadline_cache;
        if cache.scanned_at.is_none_or(|t| now >= t + DEADLINE_RESCAN) {
            cache.earliest = scan(&self.slots);
            cache.scanned_at = Some(now);
            cache.events_since_scan = false;
        }
        let rescan = cache
            .events_since_scan
            .then(|| cache.scanned_at.map(|t| t + DEADLINE_RESCAN))
            .flatten();
        [cache.earliest, rescan].into_iter().flatten().min()
    }

    /// Hands keyd what it can take now; the rest waits for its socket to drain.
    fn flush_to_keyd(&mut self) -> Result<(), DatadError> {
        let retired: Vec<u32> = self.router.drain_retired_indices().collect();
        if !retired.is_empty() {
            self.to_keyd
                .push_back(DatadToKeyd::RetiredIndices { indices: retired });
        }
        while let Some(msg) = self.to_keyd.front() {
            if !self.io.keyd.try_send(msg).map_err(DatadError::Keyd)? {
                break;
            }
            self.to_keyd.pop_front();
        }
        Ok(())
    }

    /// Queues a handshake message for keyd, unless keyd is that far behind: then it is
    /// dropped, as wireguard-go drops what its full handshake queue cannot take (the
    /// initiator retries), so a flood costs bounded memory.
    fn handshake_to_keyd(&mut self, msg: DatadToKeyd) {
        if self.to_keyd.len() >= MAX_KEYD_BACKLOG {
            tracing::debug!("key process busy: handshake message dropped");
            return;
        }
        self.to_keyd.push_back(msg);
    }

    /// Sends one datagram; drops it (with a debug log) if the family has no socket.
    async fn send_to(io: &Io, endpoint: SocketAddr, bytes: &[u8]) -> bool {
        let socket = match endpoint {
            SocketAddr::V4(_) => Some(&io.udp4),
            SocketAddr::V6(_) => io.udp6.as_ref(),
        };
        let Some(socket) = socket else {
            tracing::debug!("no IPv6 socket for {endpoint}");
            return false;
        };
        let sent = match socket.try_send_to(bytes, endpoint) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                socket.send_to(bytes, endpoint).await
            }
            other => other,
        };
        match sent {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!("send to {endpoint} failed: {e}");
                false
            }
        }
    }

    /// Asks keyd for an initiation if the timers allow one now.
    fn want_handshake(&mut self, peer: PeerId, now: Instant) {
        if let Some(slot) = self.slots.get_mut(&peer)
            && slot.timers.want_handshake(now)
        {
            self.to_keyd.push_back(DatadToKeyd::WantHandshake {
                public_key: slot.public_key,
                retry: false,
            });
        }
    }

    /// Bookkeeping after a transport packet went out.
    fn sent_transport(&mut self, peer: PeerId, len: usize, data: bool, now: Instant) {
        self.router.count_tx(peer, len);
        if let Some(slot) = self.slots.get_mut(&peer) {
            if data {
                slot.timers.data_sent(now, &mut self.rng);
            }
            slot.timers.authenticated_packet_sent(now);
            slot.timers.authenticated_packet_traversal(now);
        }
    }

    async fn on_datagram(&mut self, datagram: &mut [u8], src: SocketAddr, now: Instant) {
        let len = datagram.len();
        match message_type(datagram) {
            Ok(MESSAGE_INITIATION | MESSAGE_RESPONSE) => {
                let Some(checker) = &mut self.checker else {
                    tracing::trace!("handshake from {src} dropped: no private key configured");
                    return;
                };
                let under_load = self.load.under_load(now);
                match checker.check(datagram, src, now, under_load) {
                    Verdict::Drop => tracing::trace!("handshake from {src}: invalid MAC1"),
                    Verdict::SendCookie => {
                        match checker.create_reply(datagram, src, now, &mut self.rng) {
                            Ok(reply) => {
                                Self::send_to(&self.io, src, &reply.to_bytes()).await;
                            }
                            Err(e) => tracing::trace!("no cookie reply: {e}"),
                        }
                    }
                    Verdict::Accept => {
                        if under_load && !self.limiter.allow(src.ip(), now) {
                            tracing::trace!("handshake from {src} rate-limited");
                            return;
                        }
                        self.load.record(now);
                        self.handshake_to_keyd(DatadToKeyd::Handshake {
                            message: datagram.to_vec(),
                            source: src,
                        });
                    }
                }
            }
            Ok(MESSAGE_COOKIE_REPLY) => {
                let Ok(reply) = CookieReply::parse(datagram) else {
                    return;
                };
                if self.by_handshake_index.contains_key(&reply.receiver_index) {
                    self.handshake_to_keyd(DatadToKeyd::CookieReply {
                        message: datagram.to_vec(),
                    });
                }
            }
            // Decrypted in batches by `on_run`.
            Ok(MESSAGE_TRANSPORT) => {}
            _ => tracing::trace!("{len}-byte datagram from {src} is not WireGuard"),
        }
    }

    /// Completes a transport message that `job` decrypted in place (`n` plaintext bytes).
    async fn on_transport(
        &mut self,
        job: &wg_router::OpenJob,
        datagram: &[u8],
        n: usize,
        src: SocketAddr,
        now: Instant,
    ) {
        let len = datagram.len();
        let plaintext = datagram.get(HEADROOM..HEADROOM + n).unwrap_or_default();
        let inbound = match self.router.finish_inbound(job, plaintext, len, src, now) {
            Ok(inbound) => inbound,
            Err(reason) => {
                tracing::trace!("transport from {src} dropped: {reason}");
                return;
            }
        };
        let peer = inbound.peer;
        if let Some(slot) = self.slots.get_mut(&peer) {
            slot.timers.authenticated_packet_received(now);
            slot.timers.authenticated_packet_traversal(now);
            if inbound.handshake_complete {
                slot.timers.handshake_complete(now);
            }
            match inbound.kind {
                InboundKind::Data { .. } => slot.timers.data_received(now),
                InboundKind::Refused(reason) => {
                    // wireguard-go counts it as data received before refusing it.
                    slot.timers.data_received(now);
                    tracing::debug!("transport from {src}: inner packet dropped: {reason}");
                }
                InboundKind::Keepalive => {}
            }
        }
        if let InboundKind::Data { len: inner } = inbound.kind
            && let Some(packet) = plaintext.get(..inner)
        {
            self.write_to_tun(packet);
        }
        if inbound.handshake_complete {
            self.send_staged(peer, now).await;
        }
        if inbound.rekey {
            self.want_handshake(peer, now);
        }
    }

    /// Hands a decrypted packet to the TUN device: coalesced with its flow's neighbours
    /// when the device takes super-packets, else written right away.
    fn write_to_tun(&mut self, packet: &[u8]) {
        if self.tun_vnet {
            if self.gro.is_full() {
                self.flush_gro();
            }
            self.gro.push(packet);
        } else if let Err(e) = self.io.tun.get_ref().write(packet) {
            tracing::debug!("TUN write failed: {e}");
        }
    }

    async fn send_staged(&mut self, peer: PeerId, now: Instant) {
        let mut out = Vec::new();
        self.router.flush_staged(peer, now, &mut out);
        for staged in out {
            if Self::send_to(&self.io, staged.endpoint, &staged.message).await {
                self.sent_transport(peer, staged.message.len(), true, now);
            }
        }
    }

    /// Sends a keepalive. Like every send it keeps the session fresh: a keypair due for
    /// rekeying, or none at all, asks for a handshake (wireguard-go's keepKeyFreshSending).
    async fn send_keepalive(&mut self, peer: PeerId, now: Instant) {
        match self.router.keepalive(peer, now) {
            Outbound::Send {
                endpoint,
                job,
                rekey,
                ..
            } => {
                let mut buf = vec![0u8; job.message_len()];
                if job.seal(&mut buf).is_ok() && Self::send_to(&self.io, endpoint, &buf).await {
                    self.sent_transport(peer, buf.len(), false, now);
                }
                if rekey {
                    self.want_handshake(peer, now);
                }
            }
            Outbound::Staged { .. } | Outbound::Dropped(wg_router::DropReason::Expired) => {
                self.want_handshake(peer, now);
            }
            Outbound::Dropped(_) => {}
        }
    }

    async fn on_keyd(&mut self, msg: KeydToDatad, now: Instant) -> Result<(), DatadError> {
        match msg {
            KeydToDatad::Hello(hello) => hello
                .check(Role::Keyd)
                .map_err(|_| DatadError::Protocol("keyd (bad hello)"))?,
            KeydToDatad::Interface { public_key } => {
                self.checker = public_key.as_ref().map(CookieChecker::new);
            }
            KeydToDatad::Peer(update) if update.more_allowed_ips => {
                self.partial_peer = Some(update);
            }
            KeydToDatad::Peer(update) => self.upsert_peer(update, now),
            KeydToDatad::AllowedIps {
                public_key,
                allowed_ips,
                more,
            } => {
                let Some(partial) = self
                    .partial_peer
                    .as_mut()
                    .filter(|p| p.public_key == public_key)
                else {
                    return Err(DatadError::Protocol("keyd (allowed IPs of no peer update)"));
                };
                if partial.allowed_ips.len() + allowed_ips.len()
                    > wg_wire::constants::MAX_ALLOWED_IPS
                {
                    return Err(DatadError::Protocol("keyd (too many allowed IPs)"));
                }
                partial.allowed_ips.extend(allowed_ips);
                if !more && let Some(update) = self.partial_peer.take() {
                    self.upsert_peer(update, now);
                }
            }
            KeydToDatad::ExpireSessions => {
                self.router.expire_current_keypairs();
                for slot in self.slots.values_mut() {
                    slot.timers.forget_handshake_rate_limit();
                }
            }
            KeydToDatad::RemovePeer { public_key } => self.remove_peer(&public_key),
            KeydToDatad::ClearPeers => {
                let keys: Vec<PublicKey> = self.by_key.keys().copied().collect();
                for key in keys {
                    self.remove_peer(&key);
                }
            }
            KeydToDatad::Session(keys) => self.install_session(keys, now).await,
            KeydToDatad::SendHandshake {
                public_key,
                message,
                endpoint,
            } => {
                self.send_handshake(public_key, &message, endpoint, now)
                    .await
            }
            KeydToDatad::StatsRequest { request } => self.answer_stats(request, now),
        }
        Ok(())
    }

    fn upsert_peer(&mut self, update: PeerUpdate, now: Instant) {
        let interval = NonZeroU16::new(update.persistent_keepalive);
        let existing = self.by_key.get(&update.public_key).copied();
        let peer = match existing {
            Some(peer) => peer,
            None => {
                let peer = self.router.add_peer();
                self.by_key.insert(update.public_key, peer);
                let mut timers = PeerTimers::new(None);
                timers.start(now);
                self.slots.insert(
                    peer,
                    PeerSlot {
                        public_key: update.public_key,
                        timers,
                        last_handshake_index: None,
                    },
                );
                peer
            }
        };
        if let Some(endpoint) = update.endpoint {
            self.router.set_endpoint(peer, endpoint);
        }
        // A new peer has no prefixes; clearing scans the whole table, which adding
        // thousands of peers at once must not pay for each of them.
        if existing.is_some() {
            self.router.clear_allowed_ips(peer);
        }
        for net in update.allowed_ips {
            let _ = self.router.insert_allowed_ip(peer, net);
        }
        if let Some(slot) = self.slots.get_mut(&peer)
            && slot.timers.persistent_keepalive() != interval
        {
            slot.timers.set_persistent_keepalive(interval, now);
        }
    }

    fn remove_peer(&mut self, public_key: &PublicKey) {
        if let Some(peer) = self.by_key.remove(public_key) {
            self.router.remove_peer(peer);
            if let Some(slot) = self.slots.remove(&peer)
                && let Some(index) = slot.last_handshake_index
            {
                self.by_handshake_index.remove(&index);
            }
        }
    }

    async fn install_session(&mut self, keys: SessionKeys, now: Instant) {
        let Some(&peer) = self.by_key.get(&keys.public_key) else {
            return;
        };
        if let Some(endpoint) = keys.endpoint {
            self.router.set_endpoint(peer, endpoint);
        }
        let session = NewSession {
            initiator: keys.initiator,
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            send: SessionKey::from_bytes(keys.send.0),
            recv: SessionKey::from_bytes(keys.recv.0),
        };
        if self.router.add_session(peer, session, now).is_err() {
            return;
        }
        // The handshake message that made this session authenticated as this peer's:
        // count it as received, as wireguard-go does (a response for an initiator, an
        // initiation for a responder).
        let received = if keys.initiator {
            wg_wire::RESPONSE_LEN
        } else {
            wg_wire::INITIATION_LEN
        };
        self.router.count_rx(peer, received);
        if let Some(slot) = self.slots.get_mut(&peer) {
            slot.timers.session_derived(now);
            slot.timers.authenticated_packet_received(now);
            slot.timers.authenticated_packet_traversal(now);
            if keys.initiator {
                slot.timers.handshake_complete(now);
            }
        }
        if keys.initiator {
            // The initiator speaks first so the responder can confirm the keypair: staged
            // data if there is any, else a keepalive (as wireguard-go and the kernel do).
            if self.router.staged_len(peer) == 0 {
                self.send_keepalive(peer, now).await;
            } else {
                self.send_staged(peer, now).await;
            }
        }
    }

    async fn send_handshake(
        &mut self,
        public_key: PublicKey,
        message: &[u8],
        endpoint: Option<SocketAddr>,
        now: Instant,
    ) {
        let Some(&peer) = self.by_key.get(&public_key) else {
            return;
        };
        if let Some(endpoint) = endpoint {
            self.router.set_endpoint(peer, endpoint);
        }
        let Some(endpoint) = self.router.stats(peer).and_then(|s| s.endpoint) else {
            tracing::debug!("no endpoint for peer {public_key:?}; handshake not sent");
            return;
        };
        let sender_index = message
            .get(4..8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes);
        if !Self::send_to(&self.io, endpoint, message).await {
            return;
        }
        self.router.count_tx(peer, message.len());
        if let Some(slot) = self.slots.get_mut(&peer) {
            if message_type(message) == Ok(MESSAGE_INITIATION) {
                slot.timers.handshake_initiated(now, &mut self.rng);
            } else {
                slot.timers.handshake_response_sent(now);
            }
            slot.timers.authenticated_packet_sent(now);
            slot.timers.authenticated_packet_traversal(now);
            if let Some(old) = slot.last_handshake_index.take() {
                self.by_handshake_index.remove(&old);
            }
            if let Some(index) = sender_index {
                slot.last_handshake_index = Some(index);
                self.by_handshake_index.insert(index, peer);
            }
        }
    }

    fn answer_stats(&mut self, request: u32, now: Instant) {
        let peers: Vec<PeerStats> = self
            .slots
            .iter()
            .filter_map(|(&peer, slot)| {
                let s = self.router.stats(peer)?;
                Some(PeerStats {
                    public_key: slot.public_key,
                    endpoint: s.endpoint,
                    last_handshake: s.last_handshake.and_then(|at| unix_time(at, now)),
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                })
            })
            .collect();
        let mut chunks = peers.chunks(STATS_CHUNK).peekable();
        if chunks.peek().is_none() {
            self.to_keyd.push_back(DatadToKeyd::Stats {
                request,
                peers: Vec::new(),
                done: true,
            });
        }
        while let Some(chunk) = chunks.next() {
            self.to_keyd.push_back(DatadToKeyd::Stats {
                request,
                peers: chunk.to_vec(),
                done: chunks.peek().is_none(),
            });
        }
    }

    async fn on_timers(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .slots
            .iter()
            .filter(|(_, s)| s.timers.next_deadline().is_some_and(|d| d <= now))
            .map(|(&p, _)| p)
            .collect();
        for peer in due {
            while let Some((public_key, action)) = self
                .slots
                .get_mut(&peer)
                .and_then(|slot| Some((slot.public_key, slot.timers.poll(now)?)))
            {
                match action {
                    TimerAction::SendInitiation { retry } => {
                        self.to_keyd
                            .push_back(DatadToKeyd::WantHandshake { public_key, retry });
                    }
                    TimerAction::SendKeepalive => self.send_keepalive(peer, now).await,
                    TimerAction::GiveUp => self.router.clear_staged(peer),
                    TimerAction::ZeroKeyMaterial => {
                        self.router.clear_keypairs(peer);
                        self.to_keyd.push_back(DatadToKeyd::ZeroKeys { public_key });
                    }
                }
            }
        }
    }

    fn on_monitor(&mut self, m: Received<MonitorToDatad>) -> Result<(), DatadError> {
        match m.msg {
            MonitorToDatad::Hello(hello) => hello
                .check(Role::Monitor)
                .map_err(|_| DatadError::Protocol("monitor (bad hello)")),
            MonitorToDatad::Sockets { has_ipv6, .. } => {
                let mut fds = m.fds.into_iter();
                let udp4 = fds
                    .next()
                    .ok_or(DatadError::Protocol("monitor (missing socket)"))?;
                self.io.udp4 = to_tokio(std::net::UdpSocket::from(udp4))?;
                self.io.udp6 = if has_ipv6 {
                    fds.next()
                        .map(|fd| to_tokio(std::net::UdpSocket::from(fd)))
                        .transpose()?
                } else {
                    None
                };
                Ok(())
            }
            MonitorToDatad::Start { .. } => Err(DatadError::Protocol("monitor (second start)")),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Family {
    V4,
    V6,
}
