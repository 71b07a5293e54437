//! The TUN device as the monitor holds it: created at start (or, on Linux, adopted from a
//! caller), watched for its existence and MTU, and lent to every data plane. One type per
//! OS: Linux's `wg_tun::Tun` (offloads, multi-queue), macOS's utun and the BSDs' tun(4)
//! from `wg-platform`. The rest of the monitor goes through these few functions only.

#[cfg(not(target_os = "linux"))]
use wg_platform::TunDevice;

#[cfg(target_os = "linux")]
pub use wg_tun::Tun;

#[cfg(target_os = "macos")]
pub use wg_platform::macos::Utun as Tun;

#[cfg(any(target_os = "freebsd", target_os = "netbsd"))]
pub use wg_platform::bsd::BsdTun as Tun;

/// The MTU an interface is created with, as wireguard-go sets it.
pub const DEFAULT_MTU: u32 = 1420;

/// The name the daemon's UAPI socket and log lines use: the kernel's name for the
/// interface (on macOS `utunN`, whatever was asked for).
pub fn name(tun: &Tun) -> &str {
    tun.name()
}

/// Whether the interface was deleted (the daemon then stops).
pub fn is_deleted(tun: &Tun) -> bool {
    tun.is_deleted()
}

/// The interface's MTU now.
pub fn mtu(tun: &Tun) -> Result<u32, String> {
    tun.mtu().map_err(|e| e.to_string())
}

/// Checks an interface name given on the command line, before anything is created.
pub fn check_name(requested: &str) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    return wg_tun::validate_interface_name(requested).map_err(|e| e.to_string());
    #[cfg(target_os = "macos")]
    return wg_platform::af::utun_unit(requested)
        .map(drop)
        .map_err(|e| e.to_string());
    #[cfg(target_os = "freebsd")]
    return wg_platform::af::check_ifname(requested).map_err(|e| e.to_string());
    #[cfg(target_os = "netbsd")]
    return wg_platform::af::bsd_tun_unit(wg_platform::Os::NetBsd, requested)
        .map(drop)
        .map_err(|e| e.to_string());
}

/// Creates the interface with [`DEFAULT_MTU`]; on Linux with the TUN offloads unless
/// `offload` is false (the other systems' TUNs have none).
pub fn create(requested: &str, offload: bool) -> Result<Tun, String> {
    #[cfg(target_os = "linux")]
    {
        let created = if offload {
            Tun::create_offloaded(requested, DEFAULT_MTU)
        } else {
            Tun::create(requested, DEFAULT_MTU)
        };
        created.map_err(|e| e.to_string())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = offload;
        let tun = Tun::create(requested).map_err(|e| e.to_string())?;
        tun.set_mtu(DEFAULT_MTU)
            .map_err(|e| format!("cannot set the MTU of {}: {e}", tun.name()))?;
        Ok(tun)
    }
}

/// Removes the interface `name` when the daemon stops. On FreeBSD and NetBSD a cloned tun
/// outlives its descriptor (and would block the next start under the same name), so it is
/// destroyed, as wireguard-go does; Linux's TUN and macOS's utun go with their
/// descriptor, so there is nothing to do. An interface already gone is no error.
pub fn remove_on_stop(name: &str) {
    #[cfg(any(target_os = "freebsd", target_os = "netbsd"))]
    if nix::net::if_::if_nametoindex(name).is_ok()
        && let Err(e) = wg_platform::bsd::destroy_interface(name)
    {
        tracing::warn!(
            "cannot destroy interface {name}: {e}; remove it with `ifconfig {name} destroy`"
        );
    }
    let _ = name;
}
