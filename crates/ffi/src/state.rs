//! The global table of live tunnels and the per-thread last error.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{CString, c_char};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use wg_tunnel::{Tunnel, TunnelError};

use crate::{WG_EBADF, WG_EIO, WG_ESHUTDOWN};

/// A failure: a positive errno and a message (never key material).
#[derive(Debug)]
pub(crate) struct FfiError {
    pub(crate) code: i32,
    pub(crate) message: String,
}

impl FfiError {
    pub(crate) fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<TunnelError> for FfiError {
    fn from(e: TunnelError) -> Self {
        let code = e.errno().unwrap_or(WG_ESHUTDOWN);
        // A errno of 0 would read as success.
        let code = if code > 0 { code } else { WG_EIO };
        Self::new(code, e.to_string())
    }
}

/// Live tunnels by handle, and the next handle to try. Handles count up from 0 and are
/// not reused until the counter wraps (after 2^31 tunnels), so a stale handle is refused
/// rather than reaching a newer tunnel. A `BTreeMap` because its constructor is `const`.
struct Table {
    next: i32,
    tunnels: BTreeMap<i32, Arc<Tunnel>>,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    next: 0,
    tunnels: BTreeMap::new(),
});

/// The table; a panic while it was held cannot leave it inconsistent (each operation is
/// one map call), so a poisoned lock is taken over.
fn table() -> MutexGuard<'static, Table> {
    TABLE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers a started tunnel; its handle.
pub(crate) fn insert(tunnel: Tunnel) -> Result<i32, FfiError> {
    let mut table = table();
    let live = table.tunnels.len();
    if i32::try_from(live).is_ok_and(|n| n == i32::MAX) {
        return Err(FfiError::new(WG_EIO, "no free tunnel handle"));
    }
    let mut handle = table.next;
    while table.tunnels.contains_key(&handle) {
        handle = handle.checked_add(1).unwrap_or(0);
    }
    table.next = handle.checked_add(1).unwrap_or(0);
    table.tunnels.insert(handle, Arc::new(tunnel));
    Ok(handle)
}

fn unknown(handle: i32) -> FfiError {
    FfiError::new(
        WG_EBADF,
        format!("no tunnel with handle {handle} (never turned on, or turned off)"),
    )
}

/// The tunnel of `handle`, shared with the table while a call runs (the lock is not held
/// during the call, so tunnels do not wait for each other).
pub(crate) fn get(handle: i32) -> Result<Arc<Tunnel>, FfiError> {
    table()
        .tunnels
        .get(&handle)
        .cloned()
        .ok_or_else(|| unknown(handle))
}

/// Removes `handle` from the table and returns its tunnel once no other call uses it.
pub(crate) fn remove(handle: i32) -> Result<Tunnel, FfiError> {
    let mut shared = table()
        .tunnels
        .remove(&handle)
        .ok_or_else(|| unknown(handle))?;
    // Other threads' calls in progress hold clones; none can start any more (the handle
    // is gone), and each is answered within microseconds (or fails at once if the tunnel
    // stopped).
    loop {
        match Arc::try_unwrap(shared) {
            Ok(tunnel) => return Ok(tunnel),
            Err(still_shared) => {
                shared = still_shared;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Records `message` as the calling thread's last error.
pub(crate) fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // Cannot fail but while the thread is being torn down, or re-entered from
    // `last_error` (it never calls back here): then the message is dropped.
    let _ = LAST_ERROR.try_with(|cell| {
        if let Ok(mut slot) = cell.try_borrow_mut() {
            *slot = Some(text);
        }
    });
}

/// The calling thread's last error message, valid until the next one is recorded.
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|cell| {
            cell.try_borrow()
                .ok()
                .and_then(|slot| slot.as_ref().map(|c| c.as_ptr()))
        })
        .ok()
        .flatten()
        .unwrap_or(c"".as_ptr())
}
