//! `wgSetLogger`: a `tracing` layer that formats each event as one line and hands it to
//! the C callback.

use std::cell::Cell;
use std::ffi::{CString, c_void};
use std::fmt::Write as _;
use std::sync::{OnceLock, PoisonError, RwLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::state::FfiError;
use crate::{WG_EBUSY, WG_EDEADLK, WG_LOG_ERROR, WG_LOG_VERBOSE, WgLoggerFn};

/// The installed callback and its context (an address: the pointer is only ever handed
/// back to the callback).
#[derive(Clone, Copy)]
struct Sink {
    context: usize,
    callback: unsafe extern "C" fn(*mut c_void, i32, *const std::ffi::c_char),
}

/// The current sink. Callbacks run under the read lock; `wgSetLogger` takes the write
/// lock, so it returns only once no call of the previous callback is in progress.
static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// Whether our subscriber is the process's (set once, on the first `wgSetLogger` with a
/// callback); the error if another one was there first.
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

thread_local! {
    /// This thread is inside the callback: its own log lines are dropped, and
    /// `wgSetLogger` is refused.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

fn in_callback() -> bool {
    IN_CALLBACK.try_with(Cell::get).unwrap_or(true)
}

/// Installs (or removes, with `None`) the callback.
pub(crate) fn set(context: *mut c_void, logger: WgLoggerFn) -> Result<(), FfiError> {
    if in_callback() {
        return Err(FfiError::new(
            WG_EDEADLK,
            "wgSetLogger called from inside the logger callback",
        ));
    }
    if logger.is_some() {
        let installed = INSTALLED.get_or_init(|| {
            let subscriber =
                tracing_subscriber::registry().with(CallbackLayer.with_filter(LevelFilter::DEBUG));
            tracing::subscriber::set_global_default(subscriber).map_err(|e| e.to_string())
        });
        if let Err(e) = installed {
            return Err(FfiError::new(
                WG_EBUSY,
                format!("another tracing subscriber owns this process: {e}"),
            ));
        }
    }
    let mut sink = SINK.write().unwrap_or_else(PoisonError::into_inner);
    *sink = logger.map(|callback| Sink {
        context: context as usize,
        callback,
    });
    Ok(())
}

/// Calls the callback with one line.
#[allow(unsafe_code)]
fn deliver(sink: Sink, level: i32, line: &CString) {
    // `callback` and `context` are what the C caller gave wgSetLogger, which promises they
    // stay valid until replaced; the caller holds SINK's read lock, so wgSetLogger cannot
    // return (and the caller cannot free them) during this call. `line` outlives the call,
    // as the callback's contract says.
    // SAFETY: callback and context are valid for the call, line outlives it (above).
    unsafe { (sink.callback)(sink.context as *mut c_void, level, line.as_ptr()) }
}

/// The layer: one line per event, `target: message key=value...`.
struct CallbackLayer;

impl<S: Subscriber> Layer<S> for CallbackLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if in_callback() {
            return;
        }
        let guard = SINK.read().unwrap_or_else(PoisonError::into_inner);
        let Some(sink) = *guard else {
            return;
        };
        let meta = event.metadata();
        let mut line = Line::default();
        event.record(&mut line);
        let mut text = format!("{}: {}", meta.target(), line.message);
        text.push_str(&line.fields);
        let Ok(text) = CString::new(text.replace('\0', " ")) else {
            return;
        };
        let level = if *meta.level() <= Level::WARN {
            WG_LOG_ERROR
        } else {
            WG_LOG_VERBOSE
        };
        let _ = IN_CALLBACK.try_with(|flag| flag.set(true));
        deliver(sink, level, &text);
        let _ = IN_CALLBACK.try_with(|flag| flag.set(false));
        drop(guard);
    }
}

/// An event's message and other fields.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}
