//! The fast backend (Linux): on a real TUN device the tunnel is the daemon itself
//! in process: `wg_embed::serve` runs the key process's service (fed UAPI requests from
//! here, [`wg_keyd::UapiSource::InProcess`]), the data plane (`wg_datad::serve`: batched
//! TUN reads and writes, virtio-net super-packets when the TUN has the header, UDP GSO and
//! GRO, crypto threads) and the monitor's socket handling, as tasks of this tunnel's
//! thread. Nothing of the packet path or of the configuration logic is duplicated here:
//! this file turns the [`crate::Tunnel`] requests into UAPI requests and `wg_embed`
//! controls.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::sync::oneshot;
use wg_embed::{Control, Embedding};
use wg_keyd::{UapiRequest, UapiSource};
use wg_monitor::sockets::UdpOffload;
use wg_uapi::{Errno, Request as Uapi, Response, SetRequest};
use wg_wire::PublicKey;
use zeroize::Zeroizing;

use crate::driver::Request;
use crate::{PeerStats, TunnelError};

/// UAPI requests queued for keyd (the handle's calls are one at a time anyway).
const UAPI_QUEUE: usize = 8;

/// The TUN device behind `fd`, if it is one the data plane can drive (`TUNGETIFF`
/// succeeds, `IFF_TUN | IFF_NO_PI`, its name resolves in this thread's network
/// namespace); `None` leaves `fd` to the portable driver. A duplicate is tried, so `fd`
/// stays open either way.
pub(crate) fn adopt(fd: &OwnedFd) -> Option<wg_tun::Tun> {
    let copy = fd.try_clone().ok()?;
    match wg_tun::Tun::from_fd(copy) {
        Ok(tun) => Some(tun),
        Err(e) => {
            tracing::debug!("not a TUN device the data plane can drive ({e}): portable driver");
            None
        }
    }
}

/// Runs the tunnel on this thread until it is stopped; `ready` learns whether it started.
pub(crate) fn run(
    tun: wg_tun::Tun,
    mut settings: SetRequest,
    control: UnboundedReceiver<Request>,
    ready: SyncSender<Result<(), TunnelError>>,
) {
    let Some(runtime) = crate::driver::runtime_or_report(&ready) else {
        return;
    };
    runtime.block_on(async move {
        let sockets = match wg_monitor::sockets::bind(
            settings.listen_port.unwrap_or(0),
            0,
            UdpOffload::default(),
        ) {
            Ok(sockets) => sockets,
            Err(e) => {
                let _ = ready.send(Err(crate::driver::port_error(&e)));
                return;
            }
        };
        // keyd starts on the bound port: a random one asked for is this one.
        if settings.listen_port == Some(0) {
            settings.listen_port = Some(sockets.port);
        }
        let (uapi, requests) = mpsc::channel(UAPI_QUEUE);
        let (controls, controlled) = mpsc::unbounded_channel();
        let mut embedded = tokio::spawn(wg_embed::serve(Embedding {
            interface: tun.name().to_owned(),
            tun,
            uapi: UapiSource::InProcess(requests),
            sockets,
            crypto_threads: usize::from(wg_ipc::worker::default_crypto_threads()),
            control: Some(controlled),
        }));
        let backend = Backend { uapi, controls };
        let first = backend.set(settings).await;
        let started = first.is_ok();
        if ready.send(first).is_err() || !started {
            return;
        }
        let mut control = control;
        loop {
            tokio::select! {
                request = control.recv() => match request {
                    None | Some(Request::Stop) => break,
                    Some(request) => backend.on_request(request).await,
                },
                ended = &mut embedded => {
                    match ended {
                        Ok(Ok(stopped)) => tracing::info!("tunnel stopped: {stopped:?}"),
                        Ok(Err(e)) => tracing::error!("tunnel stopped: {e}"),
                        Err(e) => tracing::error!("tunnel stopped: {e}"),
                    }
                    return;
                }
            }
        }
        // Dropping the control sender ends the embedding, which aborts keyd and the data
        // plane; the runtime's shutdown at the end of this thread drops them, closing the
        // TUN and the sockets before `Tunnel::stop` returns.
        drop(backend);
        let _ = embedded.await;
        tracing::info!("tunnel stopped");
    });
}

struct Backend {
    uapi: mpsc::Sender<UapiRequest>,
    controls: mpsc::UnboundedSender<Control>,
}

/// keyd's answer to a refused request, as the portable driver words it.
fn refused(errno: Errno) -> TunnelError {
    TunnelError::Uapi {
        errno: errno.code(),
        message: format!("refused by the key process: {errno:?}"),
    }
}

impl Backend {
    async fn ask(&self, request: Uapi) -> Result<Response, TunnelError> {
        let (reply, answer) = oneshot::channel();
        self.uapi
            .send(UapiRequest { request, reply })
            .await
            .map_err(|_| TunnelError::Stopped)?;
        answer.await.map_err(|_| TunnelError::Stopped)
    }

    async fn control<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Control,
    ) -> Result<T, TunnelError> {
        let (reply, answer) = oneshot::channel();
        self.controls
            .send(request(reply))
            .map_err(|_| TunnelError::Stopped)?;
        answer.await.map_err(|_| TunnelError::Stopped)
    }

    async fn set(&self, request: SetRequest) -> Result<(), TunnelError> {
        match self.ask(Uapi::Set(request)).await? {
            Response::SetOk => Ok(()),
            Response::Error(errno) => Err(refused(errno)),
            Response::Get(_) => Err(TunnelError::Invalid("a get answer to a set".to_owned())),
        }
    }

    /// The `get` text without its `errno=0` trailer.
    async fn get(&self) -> Result<Zeroizing<String>, TunnelError> {
        match self.ask(Uapi::Get).await? {
            Response::Get(mut text) => {
                let end = text.len().saturating_sub(crate::GET_TRAILER.len());
                if text.get(end..) == Some(crate::GET_TRAILER) {
                    text.truncate(end);
                }
                Ok(text)
            }
            Response::Error(errno) => Err(refused(errno)),
            Response::SetOk => Err(TunnelError::Invalid("a set answer to a get".to_owned())),
        }
    }

    async fn bump(&self) -> Result<(), TunnelError> {
        let moved = self.control(Control::Bump).await??;
        if let Some(port) = moved {
            // keyd learns the port the sockets are on now (the monitor's code finds them
            // already there and changes nothing else).
            self.set(SetRequest {
                listen_port: Some(port),
                ..SetRequest::default()
            })
            .await?;
        }
        Ok(())
    }

    async fn on_request(&self, request: Request) {
        match request {
            Request::Set(settings, reply) => {
                let _ = reply.send(self.set(*settings).await);
            }
            Request::Get(reply) => {
                let _ = reply.send(self.get().await);
            }
            Request::Stats(reply) => {
                let _ = reply.send(self.get().await.map(|text| peer_stats(&text)));
            }
            Request::Bump(reply) => {
                let _ = reply.send(self.bump().await);
            }
            Request::SocketFds(reply) => {
                let _ = reply.send(self.control(Control::SocketFds).await);
            }
            Request::Roaming(enabled, reply) => {
                let answer = self.control(|r| Control::Roaming(enabled, r)).await;
                let _ = reply.send(answer);
            }
            Request::Stop => {}
        }
    }
}

/// The peers of keyd's `get` text (`wg_uapi::write_get`'s format: the endpoint is the
/// learned one, else the configured one).
fn peer_stats(text: &str) -> Vec<PeerStats> {
    let mut peers: Vec<PeerStats> = Vec::new();
    let mut handshake = (0u64, 0u32);
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key == "public_key" {
            let Some(public_key) = parse_key(value) else {
                continue;
            };
            handshake = (0, 0);
            peers.push(PeerStats {
                public_key,
                endpoint: None,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
            });
            continue;
        }
        let Some(peer) = peers.last_mut() else {
            continue;
        };
        match key {
            "endpoint" => peer.endpoint = value.parse::<SocketAddr>().ok(),
            "rx_bytes" => peer.rx_bytes = value.parse().unwrap_or(0),
            "tx_bytes" => peer.tx_bytes = value.parse().unwrap_or(0),
            "last_handshake_time_sec" => handshake.0 = value.parse().unwrap_or(0),
            "last_handshake_time_nsec" => handshake.1 = value.parse().unwrap_or(0),
            _ => continue,
        }
        peer.last_handshake = (handshake != (0, 0))
            .then(|| UNIX_EPOCH.checked_add(Duration::new(handshake.0, handshake.1)))
            .flatten();
    }
    peers
}

fn parse_key(hex: &str) -> Option<PublicKey> {
    let mut key = [0u8; wg_wire::KEY_LEN];
    if hex.len() != 2 * key.len() {
        return None;
    }
    for (byte, pair) in key.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(PublicKey::from(key))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn get_text_becomes_peer_stats() {
        let text = "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n\
            listen_port=51820\n\
            public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n\
            preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
            protocol_version=1\n\
            endpoint=192.0.2.1:51820\n\
            last_handshake_time_sec=1700000000\n\
            last_handshake_time_nsec=5\n\
            tx_bytes=10\n\
            rx_bytes=20\n\
            persistent_keepalive_interval=0\n\
            allowed_ip=10.0.0.2/32\n\
            public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376\n\
            preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
            protocol_version=1\n\
            last_handshake_time_sec=0\n\
            last_handshake_time_nsec=0\n\
            tx_bytes=0\n\
            rx_bytes=0\n";
        let stats = peer_stats(text);
        assert_eq!(stats.len(), 2);
        assert_eq!(stats[0].endpoint, Some("192.0.2.1:51820".parse().unwrap()));
        assert_eq!(
            stats[0].last_handshake,
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert_eq!((stats[0].tx_bytes, stats[0].rx_bytes), (10, 20));
        assert_eq!(stats[0].public_key.as_bytes()[0], 0xb8);
        assert_eq!(stats[1].endpoint, None);
        assert_eq!(stats[1].last_handshake, None);
    }

    #[test]
    fn a_socket_pair_is_not_adopted() {
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let fd = OwnedFd::from(a);
        assert!(adopt(&fd).is_none());
        // The descriptor stays open for the portable driver.
        assert!(nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFD).is_ok());
    }
}
