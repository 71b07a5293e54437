//! The in-process daemon (`wg_embed::run`) on a thread of the test process, inside a
//! namespace the test created: for the tests of the in-process mode.

use std::fs::File;
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use wg_netns::cmd;
use wg_netns::netns::Namespace;

use crate::daemon::socket_path;
use crate::env::SHORT;

/// The in-process daemon on its own thread, in namespace `ns`. Dropping it deletes the
/// interface (which stops it), waits up to 5 s for the thread and removes the socket file.
pub struct Embedded {
    ns: String,
    ifname: String,
    done: mpsc::Receiver<Result<wg_embed::Stopped, String>>,
    finished: bool,
}

impl Embedded {
    /// Starts `wg_embed::run` for `ifname` in `ns` on a dedicated thread; returns once the
    /// interface, UAPI socket and UDP sockets exist.
    pub fn start(ns: &Namespace, ifname: &str) -> Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (done_tx, done) = mpsc::channel();
        let (ns_name, name) = (ns.name().to_owned(), ifname.to_owned());
        std::thread::Builder::new()
            .name(format!("embed-{ifname}"))
            .spawn(move || {
                // Only this thread enters the namespace: the TUN device, the UDP sockets
                // and the runtime (its threads inherit the namespace) live there.
                let setup = || -> Result<_, String> {
                    let f = File::open(format!("/var/run/netns/{ns_name}"))
                        .map_err(|e| format!("opening the namespace {ns_name}: {e}"))?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("setns {ns_name}: {e}"))?;
                    let tun = wg_tun::Tun::create(&name, 1420)
                        .map_err(|e| format!("creating TUN {name}: {e}"))?;
                    let uapi: UnixListener = wg_uapi::bind_listener(&name)
                        .map_err(|e| format!("binding the UAPI socket: {e}"))?;
                    let sockets = wg_monitor::sockets::bind(0, 0, Default::default())
                        .map_err(|e| format!("binding UDP sockets: {e}"))?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("building the runtime: {e}"))?;
                    Ok((tun, uapi, sockets, rt))
                };
                let (tun, uapi, sockets, rt) = match setup() {
                    Ok(parts) => parts,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let r = rt
                    .block_on(wg_embed::run(name, tun, uapi, sockets))
                    .map_err(|e| e.to_string());
                let _ = done_tx.send(r);
            })
            .context("spawning the in-process daemon's thread")?;
        let embedded = Self {
            ns: ns.name().to_owned(),
            ifname: ifname.to_owned(),
            done,
            finished: false,
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(embedded),
            Ok(Err(e)) => bail!("the in-process daemon could not start: {e}"),
            Err(e) => bail!("the in-process daemon did not start within 10 s: {e}"),
        }
    }

    /// Waits up to `timeout` for `run` to return.
    pub fn wait(&mut self, timeout: Duration) -> Result<Result<wg_embed::Stopped, String>> {
        let r = self
            .done
            .recv_timeout(timeout)
            .map_err(|e| anyhow::anyhow!("wg_embed::run did not return within {timeout:?}: {e}"))?;
        self.finished = true;
        Ok(r)
    }

    /// `wg ARGS…` in the namespace, requiring success.
    pub fn wg(&self, args: &[&str]) -> Result<String> {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.ns, "wg"]).args(args);
        cmd::checked(&mut c, SHORT)
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if !self.finished {
            let mut c = std::process::Command::new("ip");
            c.args(["-n", &self.ns, "link", "del", &self.ifname]);
            let _ = cmd::cleanup_output(&mut c, SHORT);
            if self.done.recv_timeout(Duration::from_secs(5)).is_err() {
                eprintln!(
                    "wg-e2e: the in-process daemon for {} did not stop within 5 s of deleting \
                     its interface; its thread is left running",
                    self.ifname
                );
            }
        }
        let _ = std::fs::remove_file(socket_path(&self.ifname));
    }
}
