//! A tokio wrapper for [`Tun`]: the descriptor is made non-blocking and registered with
//! the runtime's reactor through [`AsyncFd`].
//!
//! # A deleted interface
//! Once the interface is deleted the kernel's poll on the TUN file reports only
//! `EPOLLERR`, which tokio does not count as *readable*. [`AsyncTun::recv`] and
//! [`AsyncTun::send`] therefore wait for error readiness too, and then the `read`/`write`
//! fails with `EBADFD`, which comes back as an error of kind
//! [`io::ErrorKind::NetworkDown`] for which [`crate::is_interface_gone`] is true: the
//! caller should shut down cleanly (wireguard-go exits when its TUN goes away).

use std::io;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::{Tun, TunError};

/// A [`Tun`] queue driven by the tokio reactor. Needs a runtime with I/O enabled.
#[derive(Debug)]
pub struct AsyncTun {
    inner: AsyncFd<Tun>,
}

impl AsyncTun {
    /// Makes `tun` non-blocking and registers it with the current tokio runtime.
    ///
    /// # Errors
    /// [`TunError::Io`] if `fcntl` or the registration fails, or if there is no current
    /// tokio runtime (call this from within one).
    ///
    /// # Panics
    /// Tokio itself panics if the current runtime was built without I/O enabled
    /// (`enable_io`/`enable_all`); that is a programming error, not a run-time condition.
    #[allow(unsafe_code)]
    pub fn new(tun: Tun) -> Result<AsyncTun, TunError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TunError::Io {
                op: "registering the TUN fd with the tokio reactor".into(),
                source: io::Error::other(
                    "no tokio runtime is running: create the AsyncTun inside one",
                ),
            });
        }
        tun.set_nonblocking(true)?;
        // `register_with_interest` needs the fd to stay open, refer to the same open file
        // description and be the one `as_raw_fd` returns for as long as the `AsyncFd` owns
        // it. `Tun` owns its `OwnedFd` from construction to drop, never replaces or closes
        // it early, and `as_raw_fd` always returns that fd; the `AsyncFd` takes ownership
        // of the `Tun`, and this type never hands out `&mut Tun`.
        // SAFETY: so nothing can close or swap the descriptor while it is registered.
        let registered = unsafe {
            AsyncFd::register_with_interest(tun, Interest::READABLE | Interest::WRITABLE)
        };
        let inner = registered.map_err(|e| {
            let (_tun, source) = e.into_parts();
            TunError::Io {
                op: "registering the TUN fd with the tokio reactor".into(),
                source,
            }
        })?;
        Ok(AsyncTun { inner })
    }

    /// Receives one packet into `buf` (see [`Tun::read`]), waiting until one is queued.
    ///
    /// # Errors
    /// An error for which [`crate::is_interface_gone`] is true once the interface is
    /// deleted; other OS errors from `read`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // Not just READABLE: a deleted interface polls as EPOLLERR only, and a recv
            // waiting for readability alone would hang forever (the tests check this).
            let mut guard = self
                .inner
                .ready(Interest::READABLE | Interest::ERROR)
                .await?;
            // `try_io` clears the readiness and returns `Err` only on `WouldBlock`
            // (a spurious wakeup, or another task took the packet): wait again.
            match guard.try_io(|tun| tun.get_ref().read(buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one packet if one is queued, without waiting: `WouldBlock` otherwise. Unlike
    /// [`Tun::read`] on [`AsyncTun::get_ref`], a `WouldBlock` here also clears the readiness
    /// the reactor reported, so the next [`AsyncTun::recv`] waits instead of first trying a
    /// read that is bound to fail (one system call saved per burst).
    ///
    /// # Errors
    /// As [`AsyncTun::recv`], plus `WouldBlock`.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.try_io(Interest::READABLE, |tun| tun.read(buf))
    }

    /// Sends one packet (see [`Tun::write`]), waiting while the device cannot take it.
    ///
    /// # Errors
    /// As [`Tun::write`]: `EIO` while the link is down, an error for which
    /// [`crate::is_interface_gone`] is true once the interface is deleted, other OS errors.
    pub async fn send(&self, packet: &[u8]) -> io::Result<usize> {
        loop {
            let mut guard = self
                .inner
                .ready(Interest::WRITABLE | Interest::ERROR)
                .await?;
            match guard.try_io(|tun| tun.get_ref().write(packet)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// The wrapped queue (for [`Tun::name`], [`Tun::mtu`], [`Tun::is_deleted`], ...).
    pub fn get_ref(&self) -> &Tun {
        self.inner.get_ref()
    }

    /// Deregisters from the reactor and returns the queue (still non-blocking).
    pub fn into_inner(self) -> Tun {
        self.inner.into_inner()
    }
}
