//! The portable data plane: the same device core, keyd protocol and monitor protocol as
//! the batched Linux plane, over I/O every system here has. One packet per TUN read or
//! write (bare, or behind the 4-byte address-family header of macOS utun and BSD tun(4)),
//! one datagram per UDP system call, the AEAD on the event loop. What the daemon runs on
//! macOS, FreeBSD and NetBSD; it builds on Linux too, where its tests run.
//!
//! The loop waits on the TUN descriptor, the IPv4 and IPv6 sockets, keyd's messages (and
//! its socket's room while messages wait for it), the monitor's messages and the device's
//! next timer. Each wakeup serves one source, at most [`BATCH`] packets of it, so a flood
//! in one direction cannot starve the other or the key process; after each, the device's
//! datagrams are sent, its events logged and its messages handed to keyd without waiting.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Instant, SystemTime};

use nix::errno::Errno;
use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, Ready};
use tokio::net::UdpSocket;
use wg_device::{Device, Encapsulated, Received, Transmit};
use wg_ipc::messages::{DatadToKeyd, DatadToMonitor, Hello, KeydToDatad, MonitorToDatad, Role};
use wg_ipc::{Channel, IpcError, Received as IpcReceived};
use wg_platform::Os;
use wg_platform::af::{AF_HEADER_LEN, AfDrop, AfHeader};
use wg_router::{HEADROOM, TAILROOM};

use crate::{DatadError, Exit, Startup};

/// The largest IP packet.
const MAX_PACKET: usize = 65_535;
/// Packets read from one source (the TUN, one UDP socket) per wakeup before the loop looks
/// at the others again.
const BATCH: usize = 64;
/// The MTU range the monitor's reports are clamped to: without `wg-tun`'s Linux limits,
/// 576 (the datagram size every IPv4 host must accept, RFC 791) up to the largest IP
/// packet. The MTU only caps the padding of transport messages, so a value out of range
/// (a monitor bug) is kept out rather than refused.
const MIN_MTU: u32 = 576;
const MAX_MTU: u32 = 65_535;

// The frame header is written into the room in front of a decrypted packet.
const _: () = assert!(HEADROOM >= AF_HEADER_LEN);

/// How packets sit on the TUN descriptor of the portable plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunFraming {
    /// Each read or write is one bare IP packet (a Linux TUN with `IFF_NO_PI`, a socket
    /// pair standing in for one).
    Raw,
    /// Each packet follows a 4-byte big-endian address family with this OS's numbers
    /// (`wg_platform::af::AfHeader::for_os`): macOS utun, FreeBSD and NetBSD tun(4) with
    /// `TUNSIFHEAD`. `AF_INET6` differs per OS. An OS whose TUN frames no family (Linux,
    /// Windows) is refused by [`serve_portable`].
    AfHeader(Os),
}

impl TunFraming {
    /// The framing of this OS's TUN device: the address-family header on macOS and the
    /// BSDs, [`TunFraming::Raw`] elsewhere.
    pub const fn native() -> TunFraming {
        match Os::current() {
            Some(os @ (Os::MacOs | Os::FreeBsd | Os::NetBsd | Os::OpenBsd)) => {
                TunFraming::AfHeader(os)
            }
            _ => TunFraming::Raw,
        }
    }

    /// The header's numbers, or `None` for raw framing.
    fn header(self) -> Result<Option<AfHeader>, DatadError> {
        match self {
            TunFraming::Raw => Ok(None),
            TunFraming::AfHeader(os) => AfHeader::for_os(os).map(Some).ok_or_else(|| {
                DatadError::Tun(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a {} TUN device frames no address family", os.name()),
                ))
            }),
        }
    }
}

/// The IP packet in a frame read from the TUN: checked against the header's family if
/// there is one; an empty frame is refused either way.
fn decode(header: Option<AfHeader>, frame: &[u8]) -> Result<&[u8], AfDrop> {
    match header {
        Some(header) => header.decode(frame),
        None if frame.is_empty() => Err(AfDrop::Short(0)),
        None => Ok(frame),
    }
}

/// Whether a TUN read error means the interface is gone: `ENXIO` or `ENODEV` (a BSD tun
/// whose device was destroyed), and on Linux `EBADFD` (a deleted TUN interface).
fn is_interface_gone(e: &io::Error) -> bool {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENXIO | Errno::ENODEV) => true,
        #[cfg(target_os = "linux")]
        Some(Errno::EBADFD) => true,
        _ => false,
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Registers the TUN descriptor with the runtime's reactor.
#[allow(unsafe_code)]
fn register(tun: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // `register` requires that, for as long as it is registered, the descriptor stays
    // open, names the same open file description, and is what `as_raw_fd` returns. Here
    // the `AsyncFd` owns the `OwnedFd`, which closes its descriptor only when dropped and
    // always returns that same number. This module only borrows it back (`get_ref`,
    // `try_io`); it never calls `get_mut`, `into_inner` or the `_mut` accessors, so no
    // code can close or swap the descriptor while the reactor watches it.
    // SAFETY: the registered descriptor stays open and unreplaced while registered (above).
    let registered = unsafe { AsyncFd::register(tun) };
    registered.map_err(|e| e.into_parts().1)
}

fn to_tokio(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

async fn readable(socket: Option<&UdpSocket>) -> io::Result<()> {
    match socket {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends one datagram on the socket of the endpoint's family; whether it went out. Waits
/// while the socket's buffer is full.
async fn send_to(
    udp4: &UdpSocket,
    udp6: Option<&UdpSocket>,
    bytes: &[u8],
    endpoint: SocketAddr,
) -> bool {
    let socket = match endpoint {
        SocketAddr::V4(_) => Some(udp4),
        SocketAddr::V6(_) => udp6,
    };
    let Some(socket) = socket else {
        tracing::debug!("no IPv6 socket for {endpoint}");
        return false;
    };
    match socket.send_to(bytes, endpoint).await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!("send to {endpoint} failed: {e}");
            false
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Family {
    V4,
    V6,
}

/// One event, with owned data only, so handling it can borrow everything mutably.
enum Event {
    /// The TUN descriptor is readable, or reports an error condition.
    Tun(io::Result<Ready>),
    /// A UDP socket became readable.
    Udp(Family, io::Result<()>),
    Keyd(Result<IpcReceived<KeydToDatad>, IpcError>),
    /// keyd's socket can take the queued messages again.
    KeydWritable(Result<(), IpcError>),
    Monitor(Result<IpcReceived<MonitorToDatad>, IpcError>),
    Timer,
}

struct Plane {
    tun: AsyncFd<OwnedFd>,
    /// The address-family header's numbers, `None` for raw framing.
    header: Option<AfHeader>,
    udp4: UdpSocket,
    udp6: Option<UdpSocket>,
    keyd: Channel,
    monitor: Option<Channel>,
    /// The protocol state machine: every decision about a packet, a peer or keyd is its.
    device: Device,
    /// One frame read from the TUN.
    tun_buf: Vec<u8>,
    /// One transport message sealed for sending.
    out_buf: Vec<u8>,
    /// One datagram received, decrypted in place (the plaintext follows `HEADROOM`
    /// bytes, where the frame header is written in front of it).
    udp_buf: Vec<u8>,
}

/// Runs the portable data plane until the interface disappears or a peer process fails:
/// one packet per TUN read and write with `framing`, one datagram per UDP system call.
/// `startup.udp_gso` and `startup.crypto_threads` are ignored (no segmentation offload, no
/// helper threads). The lockdown runs after the descriptors are set up and before the
/// first byte from keyd, the TUN or the network is read. Must be called inside a tokio
/// runtime with I/O and time enabled.
pub async fn serve_portable(startup: Startup, framing: TunFraming) -> Result<Exit, DatadError> {
    let header = framing.header()?;
    set_nonblocking(&startup.tun).map_err(DatadError::Tun)?;
    let tun = register(startup.tun).map_err(DatadError::Tun)?;
    let udp4 = to_tokio(startup.udp4)?;
    let udp6 = startup.udp6.map(to_tokio).transpose()?;
    tracing::debug!(
        ?framing,
        "portable data plane: one packet per TUN read, one datagram per UDP call \
         (UDP segmentation {} and {} crypto threads asked for, not used)",
        startup.udp_gso,
        startup.crypto_threads
    );
    if let Some(lockdown) = startup.lockdown {
        lockdown().map_err(DatadError::Sandbox)?;
    }
    startup
        .keyd
        .send(&DatadToKeyd::Hello(Hello::new(Role::Datad)), &[])
        .await
        .map_err(DatadError::Keyd)?;
    // The router starts with its default MTU; the monitor reports the real one
    // (`MonitorToDatad::Mtu`) right after the start and on every change.
    let mut plane = Plane {
        tun,
        header,
        udp4,
        udp6,
        keyd: startup.keyd,
        monitor: startup.monitor,
        device: Device::new(rand::make_rng()),
        tun_buf: vec![0; AF_HEADER_LEN + MAX_PACKET],
        out_buf: vec![0; HEADROOM + MAX_PACKET + TAILROOM],
        udp_buf: vec![0; MAX_PACKET],
    };
    plane.run().await
}

impl Plane {
    async fn run(&mut self) -> Result<Exit, DatadError> {
        loop {
            let deadline = self.device.poll_timeout(Instant::now());
            let keyd_backlog = self.device.keyd_backlog() > 0;
            let event = tokio::select! {
                // Not just READABLE: a deleted Linux TUN interface polls as an error only.
                r = self.tun.ready(Interest::READABLE | Interest::ERROR) => {
                    Event::Tun(r.map(|guard| guard.ready()))
                }
                r = self.udp4.readable() => Event::Udp(Family::V4, r),
                r = readable(self.udp6.as_ref()) => Event::Udp(Family::V6, r),
                m = self.keyd.recv::<KeydToDatad>() => Event::Keyd(m),
                r = crate::shared::keyd_writable(&self.keyd, keyd_backlog) => Event::KeydWritable(r),
                m = crate::shared::recv_monitor(self.monitor.as_ref()) => Event::Monitor(m),
                () = sleep_until(deadline) => Event::Timer,
            };
            let now = Instant::now();
            match event {
                Event::Tun(Ok(ready)) => {
                    if let Some(exit) = self.on_tun(ready).await? {
                        return Ok(exit);
                    }
                }
                Event::Tun(Err(e)) => return Err(DatadError::Tun(e)),
                Event::Udp(family, Ok(())) => self.on_udp(family),
                Event::Udp(_, Err(e)) => tracing::debug!("UDP socket error: {e}"),
                Event::Keyd(Ok(m)) => self.device.handle_keyd(m.msg, now, SystemTime::now())?,
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
            crate::shared::flush_to_keyd(&mut self.device, &self.keyd)?;
        }
    }

    // ----- TUN -> UDP -----

    /// Reads up to [`BATCH`] frames from the TUN, seals each packet and sends it. `Some`
    /// when the interface is gone.
    async fn on_tun(&mut self, ready: Ready) -> Result<Option<Exit>, DatadError> {
        if ready.is_error() && !ready.is_readable() {
            // Only an error condition: a read says which (readiness for READABLE is not
            // set, so `try_io` would not even try).
            return match nix::unistd::read(self.tun.get_ref(), &mut self.tun_buf) {
                Ok(0) => Ok(Some(self.interface_gone().await)),
                Ok(n) => {
                    self.outbound(n).await;
                    Ok(None)
                }
                Err(Errno::EAGAIN) => Err(DatadError::Tun(io::Error::other(
                    "the TUN descriptor reports an error condition",
                ))),
                Err(e) => self.tun_failed(e.into()).await,
            };
        }
        for _ in 0..BATCH {
            let buf = &mut self.tun_buf;
            let read = self.tun.try_io(Interest::READABLE, |fd| {
                nix::unistd::read(fd, buf).map_err(io::Error::from)
            });
            let n = match read {
                Ok(0) => return Ok(Some(self.interface_gone().await)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.tun_failed(e).await,
            };
            self.outbound(n).await;
        }
        Ok(None)
    }

    /// Seals the packet in the frame of `n` bytes just read and sends it; drops a frame
    /// whose header is wrong (debug log).
    async fn outbound(&mut self, n: usize) {
        let now = Instant::now();
        let frame = self.tun_buf.get(..n).unwrap_or_default();
        let packet = match decode(self.header, frame) {
            Ok(packet) => packet,
            Err(why) => {
                tracing::debug!("TUN frame dropped: {why}");
                return;
            }
        };
        match self.device.encapsulate(packet, &mut self.out_buf, now) {
            Encapsulated::Send { endpoint, len, .. } => {
                let message = self.out_buf.get(..len).unwrap_or_default();
                send_to(&self.udp4, self.udp6.as_ref(), message, endpoint).await;
            }
            Encapsulated::Staged { .. } => {}
            Encapsulated::Dropped(reason) => tracing::trace!("outbound packet dropped: {reason}"),
        }
    }

    /// A TUN read failed: the interface is gone, or the plane stops with the error.
    async fn tun_failed(&mut self, e: io::Error) -> Result<Option<Exit>, DatadError> {
        if is_interface_gone(&e) {
            Ok(Some(self.interface_gone().await))
        } else {
            Err(DatadError::Tun(e))
        }
    }

    /// Tells the monitor the interface is gone (if it still listens).
    async fn interface_gone(&mut self) -> Exit {
        tracing::info!("the TUN interface is gone; data plane exiting");
        if let Some(m) = &self.monitor {
            let _ = m.send(&DatadToMonitor::InterfaceGone, &[]).await;
        }
        Exit::InterfaceGone
    }

    // ----- UDP -> TUN -----

    /// Receives up to [`BATCH`] datagrams from one socket and hands them to the device;
    /// decrypted packets go to the TUN.
    fn on_udp(&mut self, family: Family) {
        for _ in 0..BATCH {
            let socket = match family {
                Family::V4 => Some(&self.udp4),
                Family::V6 => self.udp6.as_ref(),
            };
            let Some(socket) = socket else {
                return;
            };
            let (n, source) = match socket.try_recv_from(&mut self.udp_buf) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors of earlier sends (ECONNREFUSED and friends): not fatal.
                Err(e) => {
                    tracing::debug!("UDP receive error: {e}");
                    continue;
                }
            };
            let now = Instant::now();
            let Some(datagram) = self.udp_buf.get_mut(..n) else {
                continue;
            };
            match self.device.handle_datagram(datagram, source, now) {
                Ok(Received::Data { len, .. }) => self.write_tun(len),
                Ok(Received::Refused { reason, .. }) => {
                    tracing::debug!("transport from {source}: inner packet dropped: {reason}");
                }
                Ok(_) => {}
                Err(why) => tracing::trace!("datagram from {source} dropped: {why}"),
            }
        }
    }

    /// Writes the plaintext of `len` bytes at `udp_buf[HEADROOM..]` to the TUN, its frame
    /// header in front of it. A TUN that cannot take it now drops it, as a link would.
    fn write_tun(&mut self, len: usize) {
        let Some(packet) = self.udp_buf.get(HEADROOM..HEADROOM + len) else {
            return;
        };
        let start = match self.header {
            None => HEADROOM,
            Some(header) => {
                let bytes = match header.encode(packet) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        tracing::debug!("TUN write skipped: {e}");
                        return;
                    }
                };
                let start = HEADROOM - AF_HEADER_LEN;
                let Some(room) = self.udp_buf.get_mut(start..HEADROOM) else {
                    return;
                };
                room.copy_from_slice(&bytes);
                start
            }
        };
        let Some(frame) = self.udp_buf.get(start..HEADROOM + len) else {
            return;
        };
        if let Err(e) = nix::unistd::write(self.tun.get_ref(), frame) {
            tracing::debug!("TUN write failed, packet dropped: {e}");
        }
    }

    // ----- keyd, the monitor, the device's output -----

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
            if send_to(&self.udp4, self.udp6.as_ref(), &bytes, destination).await {
                self.device.transmitted(peer, bytes.len());
            }
        }
    }

    fn on_monitor(&mut self, m: IpcReceived<MonitorToDatad>) -> Result<(), DatadError> {
        if let Some(new) = crate::shared::on_monitor(&mut self.device, m, MIN_MTU..=MAX_MTU)? {
            self.udp4 = to_tokio(new.udp4)?;
            self.udp6 = new.udp6.map(to_tokio).transpose()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: [u8; 4] = [0x45, 0, 0, 4];
    const V6: [u8; 4] = [0x60, 0, 0, 0];

    fn frame(family: u32, packet: &[u8]) -> Vec<u8> {
        [&family.to_be_bytes()[..], packet].concat()
    }

    #[test]
    fn af_framing_takes_each_oses_numbers_and_refuses_the_others() {
        let mac = TunFraming::AfHeader(Os::MacOs).header().unwrap();
        let freebsd = TunFraming::AfHeader(Os::FreeBsd).header().unwrap();
        let netbsd = TunFraming::AfHeader(Os::NetBsd).header().unwrap();
        assert_eq!(decode(mac, &frame(30, &V6)), Ok(&V6[..]));
        assert_eq!(decode(freebsd, &frame(28, &V6)), Ok(&V6[..]));
        assert_eq!(decode(netbsd, &frame(24, &V6)), Ok(&V6[..]));
        for header in [mac, freebsd, netbsd] {
            assert_eq!(decode(header, &frame(2, &V4)), Ok(&V4[..]));
            // IPv4 behind the IPv6 family, and a short frame.
            assert!(decode(header, &frame(header.unwrap().inet6, &V4)).is_err());
            assert!(decode(header, &[0, 0, 0]).is_err());
        }
        // Another OS's AF_INET6 is no family here.
        assert_eq!(decode(mac, &frame(28, &V6)), Err(AfDrop::UnknownFamily(28)));
    }

    #[test]
    fn raw_framing_passes_packets_and_refuses_empty_frames() {
        let raw = TunFraming::Raw.header().unwrap();
        assert_eq!(decode(raw, &V4), Ok(&V4[..]));
        assert_eq!(decode(raw, &[]), Err(AfDrop::Short(0)));
    }

    #[test]
    fn oses_without_a_family_header_are_refused() {
        for os in [Os::Linux, Os::Windows] {
            assert!(matches!(
                TunFraming::AfHeader(os).header(),
                Err(DatadError::Tun(e)) if e.kind() == io::ErrorKind::InvalidInput
            ));
        }
    }

    #[test]
    fn native_framing_is_the_oses() {
        let expected = if cfg!(target_os = "linux") {
            TunFraming::Raw
        } else if cfg!(target_os = "macos") {
            TunFraming::AfHeader(Os::MacOs)
        } else if cfg!(target_os = "freebsd") {
            TunFraming::AfHeader(Os::FreeBsd)
        } else {
            TunFraming::AfHeader(Os::NetBsd)
        };
        assert_eq!(TunFraming::native(), expected);
    }

    #[test]
    fn interface_gone_errors() {
        assert!(is_interface_gone(&io::Error::from_raw_os_error(
            Errno::ENXIO as i32
        )));
        assert!(is_interface_gone(&io::Error::from_raw_os_error(
            Errno::ENODEV as i32
        )));
        assert!(!is_interface_gone(&io::Error::from_raw_os_error(
            Errno::EINVAL as i32
        )));
        assert!(!is_interface_gone(&io::Error::other("other")));
    }
}
