//! The data plane's event loop: one task that waits on the TUN device, the UDP sockets, the
//! key process, the monitor and the earliest timer, feeds each event to the sans-IO device
//! core (`wg-device`) and carries out what it queues. The batching, offloads and crypto
//! threads are here; every decision is the core's.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use wg_device::{Device, Received, Transmit};
use wg_ipc::messages::{DatadToKeyd, DatadToMonitor, Hello, KeydToDatad, MonitorToDatad, Role};
use wg_ipc::{Channel, IpcError, Received as IpcReceived};
use wg_router::{HEADROOM, Outbound, PeerId};
use wg_tun::AsyncTun;
use wg_wire::{MESSAGE_TRANSPORT, message_type};

use crate::batch::{MAX_PACKET, OutBatch, SLOT};
use crate::crypto::CryptoPool;
use crate::udp::{self, Socket};
use crate::{DatadError, Exit, Startup};

/// UDP runs (each up to 64 datagrams) received per wakeup before the loop looks at its
/// other sources again.
const BATCH: usize = 16;
/// TUN reads per wakeup, at most.
const TUN_READS: usize = 64;
/// Segments sent per wakeup from the TUN side before the loop looks elsewhere.
const TUN_SEGMENTS: usize = 256;

/// Everything the event loop waits on.
struct Io {
    tun: AsyncTun,
    udp4: Socket,
    udp6: Option<Socket>,
    keyd: Channel,
    monitor: Option<Channel>,
}

/// One event, with owned data only, so handling it can borrow everything mutably.
enum Event {
    Tun(std::io::Result<usize>),
    /// A UDP socket became readable.
    Udp(Family, std::io::Result<()>),
    Keyd(Result<IpcReceived<KeydToDatad>, IpcError>),
    /// keyd's socket can take the queued messages again.
    KeydWritable(Result<(), IpcError>),
    Monitor(Result<IpcReceived<MonitorToDatad>, IpcError>),
    Timer,
}

struct Daemon {
    io: Io,
    /// The protocol state machine: every decision about a packet, a peer or keyd is its.
    device: Device,
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
}

/// A sealed packet of the outbound batch.
#[derive(Debug, Clone, Copy)]
struct Sealed {
    slot: usize,
    len: usize,
    peer: PeerId,
    endpoint: SocketAddr,
}

async fn readable(socket: Option<&Socket>) -> std::io::Result<()> {
    match socket {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

fn to_tokio(socket: std::net::UdpSocket) -> std::io::Result<Socket> {
    Socket::new(socket)
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
    // The router starts with the MTU the TUN device is created with; the monitor reports
    // the real one (`MonitorToDatad::Mtu`) right after the start and on every change.
    let device = Device::new(rand::make_rng());
    let mut daemon = Daemon {
        io,
        device,
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
            if let Some(deadline) = self.device.poll_timeout(Instant::now())
                && armed.is_none_or(|at| deadline < at)
            {
                timer.as_mut().reset(deadline.into());
                armed = Some(deadline);
            }
            let keyd_backlog = self.device.keyd_backlog() > 0;
            let event = {
                let io = &self.io;
                tokio::select! {
                    r = io.tun.recv(&mut self.tun_read) => Event::Tun(r),
                    r = io.udp4.readable() => Event::Udp(Family::V4, r),
                    r = readable(io.udp6.as_ref()) => Event::Udp(Family::V6, r),
                    m = io.keyd.recv::<KeydToDatad>() => Event::Keyd(m),
                    r = crate::shared::keyd_writable(&io.keyd, keyd_backlog) => Event::KeydWritable(r),
                    m = crate::shared::recv_monitor(io.monitor.as_ref()) => Event::Monitor(m),
                    () = &mut timer, if armed.is_some() => Event::Timer,
                }
            };
            let now = Instant::now();
            if let Event::Timer = event {
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
                Event::Keyd(Ok(m)) => self.on_keyd(m.msg, now)?,
                Event::Keyd(Err(e)) | Event::KeydWritable(Err(e)) => {
                    return Err(DatadError::Keyd(e));
                }
                Event::KeydWritable(Ok(())) => {}
                Event::Monitor(Ok(m)) => self.on_monitor(m)?,
                Event::Monitor(Err(e)) => return Err(DatadError::Monitor(e)),
                Event::Timer => self.device.handle_timeout(now),
            }
            self.send_transmits().await;
            crate::shared::log_events(&mut self.device);
            crate::shared::flush_to_keyd(&mut self.device, &self.io.keyd)?;
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
            let (job, route) = match self.device.route_outbound(self.out.plaintext(slot), now) {
                Outbound::Send {
                    peer,
                    endpoint,
                    job,
                    ..
                } => (Some(job), Some((peer, endpoint))),
                Outbound::Staged { .. } => (None, None),
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
                        self.device.sent_transport(sealed.peer, sealed.len, now);
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
                self.device
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
                if let Err(why) = self.device.handle_datagram(datagram, src, now) {
                    tracing::debug!("handshake message from {src} dropped: {why}");
                }
            } else if let (Some(job), Some(n)) = (job, *opened) {
                self.on_transport(job, datagram, n, src, now);
            } else if job.is_some() {
                tracing::trace!("transport from {src} failed authentication");
            }
        }
        jobs.clear();
        self.open_jobs = jobs;
        self.crypto_lens = lens;
        // Cookie replies and staged packets the run released go out before the next run.
        self.send_transmits().await;
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

    /// Sends the datagrams the device made itself (handshakes, keepalives, staged data,
    /// cookie replies).
    async fn send_transmits(&mut self) {
        while let Some(Transmit {
            destination,
            peer,
            bytes,
            ..
        }) = self.device.poll_transmit()
        {
            if Self::send_to(&self.io, destination, &bytes).await {
                self.device.transmitted(peer, bytes.len());
            }
        }
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
        match socket.send_with(|s| s.send_to(bytes, endpoint)).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!("send to {endpoint} failed: {e}");
                false
            }
        }
    }

    /// Completes a transport message that `job` decrypted in place (`n` plaintext bytes).
    fn on_transport(
        &mut self,
        job: &wg_router::OpenJob,
        datagram: &[u8],
        n: usize,
        src: SocketAddr,
        now: Instant,
    ) {
        match self.device.handle_transport(job, datagram, n, src, now) {
            Ok(Received::Data { len, .. }) => {
                if let Some(packet) = datagram.get(HEADROOM..HEADROOM + len) {
                    self.write_to_tun(packet);
                }
            }
            Ok(Received::Refused { reason, .. }) => {
                tracing::debug!("transport from {src}: inner packet dropped: {reason}");
            }
            Ok(_) => {}
            Err(why) => tracing::trace!("transport from {src} dropped: {why}"),
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

    fn on_keyd(&mut self, msg: KeydToDatad, now: Instant) -> Result<(), DatadError> {
        self.device
            .handle_keyd(msg, now, SystemTime::now())
            .map_err(DatadError::Device)
    }

    fn on_monitor(&mut self, m: IpcReceived<MonitorToDatad>) -> Result<(), DatadError> {
        let range = wg_tun::MIN_MTU..=wg_tun::MAX_MTU;
        if let Some(new) = crate::shared::on_monitor(&mut self.device, m, range)? {
            self.io.udp4 = to_tokio(new.udp4)?;
            self.io.udp6 = new.udp6.map(to_tokio).transpose()?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Family {
    V4,
    V6,
}
