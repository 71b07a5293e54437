//! A WireGuard interface run by the library tunnel, configured with `wg(8)`: creates TUN
//! `IFNAME` (Linux, root; with the virtio-net header and offloads as the daemon creates its
//! own, or a plain one with `--no-offloads`, as an app's TUN is), starts a [`Tunnel`] on it and serves the UAPI socket
//! `/var/run/wireguard/IFNAME.sock`, forwarding `set` and `get` to [`Tunnel::set`] and
//! [`Tunnel::get`]. Runs until SIGTERM or SIGINT, or until the interface is deleted.
//!
//! `cargo xtask bench` builds it and measures it as implementation `wg-tunnel`; a plain
//! TUN: `--impl 'wg-tunnel-plain=target/release/examples/tunnel --no-offloads {if}'`.
#![allow(clippy::print_stderr)]

#[cfg(target_os = "linux")]
use std::time::Duration;

#[cfg(target_os = "linux")]
use wg_tunnel::{Framing, Tunnel, TunnelError};
#[cfg(target_os = "linux")]
use wg_uapi::{Errno, ParseOptions, Request, Response};

#[cfg(target_os = "linux")]
fn errno_of(error: &TunnelError) -> Errno {
    match error.errno() {
        Some(5) => Errno::Io,
        Some(71) => Errno::Protocol,
        Some(22) => Errno::Invalid,
        Some(98) => Errno::PortInUse,
        Some(13) => Errno::PermissionDenied,
        _ => Errno::Unknown,
    }
}

#[cfg(target_os = "linux")]
fn answer(tunnel: &Tunnel, request: Request) -> Response {
    match request {
        Request::Get => match tunnel.get() {
            Ok(mut text) => {
                text.push_str("errno=0\n\n");
                Response::Get(text)
            }
            Err(e) => Response::Error(errno_of(&e)),
        },
        Request::Set(request) => {
            let text = wg_uapi::write_set(&request);
            match tunnel.set(&text) {
                Ok(()) => Response::SetOk,
                Err(e) => Response::Error(errno_of(&e)),
            }
        }
    }
}

/// It creates a Linux TUN device (`wg_tun`); elsewhere it only says so.
#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "tunnel: this example creates a Linux TUN device and runs only on Linux, not on {}",
        std::env::consts::OS
    );
    std::process::ExitCode::FAILURE
}

#[cfg(target_os = "linux")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let plain = args.first().is_some_and(|a| a == "--no-offloads");
    if plain {
        args.remove(0);
    }
    let [ifname] = args.as_slice() else {
        return Err("usage: tunnel [--no-offloads] IFNAME".into());
    };
    let ifname = ifname.clone();
    let tun = if plain {
        wg_tun::Tun::create(&ifname, 1420)?
    } else {
        wg_tun::Tun::create_offloaded(&ifname, 1420)?
    };
    let tunnel = Tunnel::start(tun.into_fd(), Framing::Raw, "")?;
    eprintln!("tunnel on {ifname}: {:?} backend", tunnel.backend());
    let listener = wg_uapi::bind_listener(&ifname)?;
    let _guard = wg_uapi::SocketFileGuard::new(wg_uapi::socket_path(
        std::path::Path::new(wg_uapi::DEFAULT_SOCKET_DIR),
        &ifname,
    ));
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut alive = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = accepted?;
                    if wg_uapi::check_peer(&stream).is_err() {
                        continue;
                    }
                    let tunnel = &tunnel;
                    let served = wg_uapi::serve_connection(
                        stream,
                        ParseOptions::default(),
                        Duration::from_secs(30),
                        |request| std::future::ready(answer(tunnel, request)),
                    )
                    .await;
                    if let Err(e) = served {
                        eprintln!("UAPI client: {e}");
                    }
                }
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = alive.tick() => {
                    if !tunnel.is_running() {
                        eprintln!("the tunnel stopped (interface gone?)");
                        break;
                    }
                }
            }
        }
        Ok::<(), std::io::Error>(())
    })?;
    tunnel.stop()?;
    Ok(())
}
