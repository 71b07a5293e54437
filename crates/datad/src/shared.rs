//! What the two data planes' event loops do alike (the batched Linux plane in `plane` and
//! the portable one in `portable`): waiting on keyd and the monitor, draining the device's
//! messages for keyd and its events, and the monitor's messages.

use std::ops::RangeInclusive;

use wg_device::{Device, Importance};
use wg_ipc::messages::{MonitorToDatad, Role};
use wg_ipc::{Channel, IpcError, Received as IpcReceived};

use crate::DatadError;

/// Waits until keyd's socket has room, if there is something to send.
pub(crate) async fn keyd_writable(keyd: &Channel, waiting: bool) -> Result<(), IpcError> {
    if waiting {
        keyd.writable().await
    } else {
        std::future::pending().await
    }
}

/// The monitor's next message; never, in an embedding without a monitor.
pub(crate) async fn recv_monitor(
    monitor: Option<&Channel>,
) -> Result<IpcReceived<MonitorToDatad>, IpcError> {
    match monitor {
        Some(m) => m.recv().await,
        None => std::future::pending().await,
    }
}

/// Hands keyd what it can take now; the rest waits for its socket to drain. keyd may
/// itself be waiting for us to read: the loop never waits on it, it keeps serving and
/// sends the rest when keyd's socket has room.
pub(crate) fn flush_to_keyd(device: &mut Device, keyd: &Channel) -> Result<(), DatadError> {
    while let Some(msg) = device.keyd_front() {
        if !keyd.try_send(msg).map_err(DatadError::Keyd)? {
            break;
        }
        device.keyd_sent();
    }
    Ok(())
}

/// What the device did: the handshake story at info (wireguard-go's verbose), routine
/// chatter at debug, what the configuration may fix as a warning.
pub(crate) fn log_events(device: &mut Device) {
    while let Some(event) = device.poll_event() {
        match event.importance() {
            Importance::Routine => tracing::debug!("{event}"),
            Importance::Story => tracing::info!("{event}"),
            Importance::Problem => tracing::warn!("{event}"),
        }
    }
}

/// New listen sockets from the monitor, for the plane to register its way.
pub(crate) struct NewSockets {
    pub(crate) udp4: std::net::UdpSocket,
    pub(crate) udp6: Option<std::net::UdpSocket>,
}

/// Applies a monitor message to the device: the MTU (clamped to `mtu_range`, the TUN's;
/// anything else is a monitor bug, kept out anyway) and roaming. New sockets are returned
/// for the caller; a second `Start` or a bad hello is a protocol violation.
pub(crate) fn on_monitor(
    device: &mut Device,
    m: IpcReceived<MonitorToDatad>,
    mtu_range: RangeInclusive<u32>,
) -> Result<Option<NewSockets>, DatadError> {
    match m.msg {
        MonitorToDatad::Hello(hello) => hello
            .check(Role::Monitor)
            .map(|()| None)
            .map_err(|_| DatadError::Protocol("monitor (bad hello)")),
        MonitorToDatad::Sockets { has_ipv6, .. } => {
            let mut fds = m.fds.into_iter();
            let udp4 = fds
                .next()
                .ok_or(DatadError::Protocol("monitor (missing socket)"))?;
            let udp6 = if has_ipv6 {
                fds.next().map(std::net::UdpSocket::from)
            } else {
                None
            };
            Ok(Some(NewSockets {
                udp4: std::net::UdpSocket::from(udp4),
                udp6,
            }))
        }
        MonitorToDatad::Mtu { mtu } => {
            let mtu = mtu.clamp(*mtu_range.start(), *mtu_range.end());
            device.set_mtu(usize::try_from(mtu).unwrap_or(wg_router::DEFAULT_MTU));
            Ok(None)
        }
        MonitorToDatad::Roaming { enabled } => {
            device.set_roaming(enabled);
            Ok(None)
        }
        MonitorToDatad::Start { .. } => Err(DatadError::Protocol("monitor (second start)")),
    }
}
