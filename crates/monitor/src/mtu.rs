//! The TUN device's MTU as the data plane must know it (`MonitorToDatad::Mtu`): the data
//! plane pads transport packets up to a multiple of 16 but never beyond the MTU, and
//! `wg-quick` sets the MTU only after the daemon started. Decided without I/O
//! ([`MtuWatch`]), for both the monitor and the in-process mode (`wg-embed`): the caller
//! reads the MTU ([`crate::device::mtu`]) and sends what this says.

use std::fmt::Display;

/// The last MTU read from the device, and when to tell the data plane.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MtuWatch {
    last: Option<u32>,
}

impl MtuWatch {
    /// The MTU to send right after a data plane's `Start`: `read` (the MTU read now), or
    /// the last value read when that failed; `None` only if no read ever succeeded (the
    /// data plane then keeps the MTU the device was created with).
    pub fn on_start<E: Display>(&mut self, read: Result<u32, E>) -> Option<u32> {
        self.observe(read);
        self.last
    }

    /// The MTU to send to the running data plane after a periodic read: `Some` only when
    /// it differs from the last value read. A failed read (the interface may be going
    /// away, which the caller's deletion check handles) keeps the last value.
    pub fn on_poll<E: Display>(&mut self, read: Result<u32, E>) -> Option<u32> {
        let before = self.last;
        self.observe(read);
        if self.last == before { None } else { self.last }
    }

    /// The last MTU read, if any.
    pub fn last(&self) -> Option<u32> {
        self.last
    }

    fn observe<E: Display>(&mut self, read: Result<u32, E>) {
        match read {
            Ok(mtu) => self.last = Some(mtu),
            Err(e) => tracing::debug!("cannot read the TUN's MTU ({e}); keeping {:?}", self.last),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(mtu: u32) -> Result<u32, String> {
        Ok(mtu)
    }

    fn gone() -> Result<u32, String> {
        Err("the interface wg0 is gone".into())
    }

    #[test]
    fn a_start_gets_the_mtu_read_then_or_the_last_one() {
        let mut w = MtuWatch::default();
        assert_eq!(w.on_start(gone()), None);
        assert_eq!(w.on_start(read(1420)), Some(1420));
        // A restarted data plane is told the MTU although it did not change.
        assert_eq!(w.on_start(read(1420)), Some(1420));
        assert_eq!(w.on_start(gone()), Some(1420));
        assert_eq!(w.on_start(read(1281)), Some(1281));
    }

    #[test]
    fn a_poll_reports_changes_only() {
        let mut w = MtuWatch::default();
        assert_eq!(w.on_start(read(1420)), Some(1420));
        assert_eq!(w.on_poll(read(1420)), None);
        assert_eq!(w.on_poll(read(1281)), Some(1281));
        assert_eq!(w.on_poll(read(1281)), None);
        // A failed read keeps the last value: nothing to send, and no change afterwards
        // when the same value is read again.
        assert_eq!(w.on_poll(gone()), None);
        assert_eq!(w.last(), Some(1281));
        assert_eq!(w.on_poll(read(1281)), None);
        assert_eq!(w.on_poll(read(9000)), Some(9000));
    }

    #[test]
    fn the_first_successful_poll_after_failed_reads_is_a_change() {
        let mut w = MtuWatch::default();
        assert_eq!(w.on_start(gone()), None);
        assert_eq!(w.on_poll(gone()), None);
        assert_eq!(w.on_poll(read(1420)), Some(1420));
    }
}
