//! A transport keypair and a peer's three slots for them (whitepaper 5.4.6 and 6.1):
//! `current` sends and receives; `previous` still receives packets in flight; `next` is a
//! responder's keypair that waits for the initiator's first packet to confirm it.

use std::sync::Arc;
use std::time::Instant;

use wg_wire::constants::{REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME};

use crate::aead::Cipher;
use crate::replay::ReplayWindow;

/// One session's keys, counters and replay window.
pub(crate) struct Keypair {
    pub(crate) send: Arc<Cipher>,
    pub(crate) recv: Arc<Cipher>,
    pub(crate) local_index: u32,
    pub(crate) remote_index: u32,
    pub(crate) created: Instant,
    pub(crate) initiator: bool,
    /// The next counter to send with.
    pub(crate) send_counter: u64,
    pub(crate) replay: ReplayWindow,
}

impl Keypair {
    /// Whether the keypair is younger than Reject-After-Time.
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) < REJECT_AFTER_TIME
    }

    /// Whether the keypair may still send: fresh, and counters not exhausted.
    pub(crate) fn can_send(&self, now: Instant) -> bool {
        self.is_fresh(now) && self.send_counter < REJECT_AFTER_MESSAGES
    }
}

/// The three keypair slots of a peer.
///
/// Each keypair is boxed: with its 1 KiB replay window inline, three empty slots would
/// cost every idle peer 3 KiB (30 MiB for 10,000 peers); boxed they cost three pointers.
#[derive(Default)]
pub(crate) struct Keypairs {
    pub(crate) current: Option<Box<Keypair>>,
    pub(crate) previous: Option<Box<Keypair>>,
    pub(crate) next: Option<Box<Keypair>>,
}

impl Keypairs {
    /// Installs a new keypair as the whitepaper and wireguard-go do: an initiator's is
    /// confirmed (it just received the response) and becomes current; a responder's waits in
    /// `next`. Returns the local indices of keypairs that are gone.
    pub(crate) fn install(&mut self, keypair: Keypair, retired: &mut Vec<u32>) {
        let keypair = Box::new(keypair);
        let mut retire = |k: Option<Box<Keypair>>| {
            if let Some(k) = k {
                retired.push(k.local_index);
            }
        };
        if keypair.initiator {
            if let Some(next) = self.next.take() {
                // An unconfirmed responder keypair is newer than current: keep it as previous.
                retire(self.previous.replace(next));
                retire(self.current.take());
            } else {
                retire(self.previous.take());
                self.previous = self.current.take();
            }
            self.current = Some(keypair);
        } else {
            retire(self.next.replace(keypair));
            retire(self.previous.take());
        }
    }

    /// The initiator used `next`: it becomes current, current becomes previous.
    pub(crate) fn confirm_next(&mut self, retired: &mut Vec<u32>) {
        if let Some(next) = self.next.take() {
            if let Some(old) = self.previous.take() {
                retired.push(old.local_index);
            }
            self.previous = self.current.replace(next);
        }
    }

    /// The slot holding `local_index`.
    pub(crate) fn find_mut(&mut self, local_index: u32) -> Option<&mut Keypair> {
        [&mut self.current, &mut self.previous, &mut self.next]
            .into_iter()
            .filter_map(Option::as_deref_mut)
            .find(|k| k.local_index == local_index)
    }

    pub(crate) fn find(&self, local_index: u32) -> Option<&Keypair> {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .filter_map(Option::as_deref)
            .find(|k| k.local_index == local_index)
    }

    pub(crate) fn is_next(&self, local_index: u32) -> bool {
        self.next
            .as_ref()
            .is_some_and(|k| k.local_index == local_index)
    }

    /// Drops every keypair (their keys zeroize on drop).
    pub(crate) fn clear(&mut self, retired: &mut Vec<u32>) {
        for k in [self.current.take(), self.previous.take(), self.next.take()]
            .into_iter()
            .flatten()
        {
            retired.push(k.local_index);
        }
    }
}
