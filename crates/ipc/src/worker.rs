//! The start of a worker process (keyd, datad), shared so both begin the same way: answer
//! `--version`, ignore the stop signals (only the monitor reacts to them), logging, die
//! with the parent, adopt the channel to the monitor, close everything else, start a
//! single-threaded runtime, and hand the work a sandbox step to run once its descriptors
//! are in place and before it reads untrusted input. Also what every process starts with:
//! its logging ([`init_logging`]: `LOG_LEVEL`, each line tagged with the interface named in
//! [`INTERFACE_ENV`] and the process) and the data plane's default number of crypto threads
//! ([`default_crypto_threads`], which the monitor passes on in datad's start message).

use std::fmt::{Debug, Display};
use std::future::Future;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use wg_sandbox::{Role, SyscallReport};

use crate::{Channel, IPC_FD_ENV, SIGSYS_REPORT_PREFIX, inherited_fd};

/// A step a worker runs right before it starts serving: its sandbox.
pub type Lockdown = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Runs a worker: `binary` names it in messages, `role` picks its sandbox, `version` is
/// what `BINARY --version` prints after the name, and `serve` does the work with the
/// monitor channel and the sandbox step.
pub fn main<F, Fut, T, E>(binary: &'static str, role: Role, version: &str, serve: F) -> ExitCode
where
    F: FnOnce(Channel, Lockdown) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: Debug,
    E: Display,
{
    let process = binary.strip_prefix("wireguard-rs-").unwrap_or(binary);
    let interface = std::env::var(INTERFACE_ENV).ok();
    let tag = log_tag(Some(process), interface.as_deref());
    let fail = |message: &dyn Display, code: u8| {
        print_error_line(&format!("{tag}: {message}"));
        ExitCode::from(code)
    };
    // First: the groups the spawner executed us with, not dumpable, deaf to the stop
    // signals the whole group may get (the monitor stops us), and die with the parent —
    // before anything reads input or starts threads.
    if let Err(e) = wg_sandbox::settle_exec_credentials() {
        return fail(&e, 1);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.as_slice(), [a] if a == "--version" || a == "-V") {
        println!("{binary} {version}");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = wg_sandbox::ignore_stop_signals() {
        return fail(&e, 1);
    }
    if let Err(e) = wg_sandbox::die_with_parent() {
        return fail(&e, 1);
    }
    init_logging(Some(process), interface.as_deref(), false);
    let options = match wg_sandbox::Options::from_worker_args(args) {
        Ok(o) => o,
        Err(e) => return fail(&e, 2),
    };
    let fd = match inherited_fd(IPC_FD_ENV) {
        Ok(Some(fd)) => fd,
        Ok(None) => {
            return fail(
                &"this worker is started by wireguard-rs; run `wireguard-rs IFNAME` instead",
                2,
            );
        }
        Err(e) => return fail(&e, 2),
    };
    let report = SyscallReport {
        fd: fd.as_raw_fd(),
        prefix: SIGSYS_REPORT_PREFIX,
    };
    if let Err(e) = wg_sandbox::close_inherited_fds(&[report.fd]) {
        return fail(&e, 1);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}"), 1),
    };
    // A second handle on the monitor's channel, to say why if the work fails (the channel
    // itself is gone by then).
    let failure_channel = fd.try_clone().ok();
    let result = runtime.block_on(async {
        let channel = match Channel::from_fd(fd) {
            Ok(c) => c,
            Err(e) => return Err(e.to_string()),
        };
        let lockdown: Lockdown = Box::new(move || {
            wg_sandbox::lock_down(role, &options, Some(report)).map_err(|e| e.to_string())?;
            wg_sandbox::attempt_forbidden_syscall_if_requested(role);
            Ok(())
        });
        serve(channel, lockdown).await.map_err(|e| e.to_string())
    });
    match result {
        Ok(end) => {
            tracing::info!("stopped: {end:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("failed: {e}");
            if let Some(fd) = &failure_channel {
                report_failure(fd, &e);
            }
            ExitCode::FAILURE
        }
    }
}

/// Tells the monitor why this worker is about to exit ([`crate::failure_report`]), so the
/// reason reaches the user where this process's standard error goes nowhere. Best effort:
/// the monitor may be gone already.
fn report_failure(channel: &std::os::fd::OwnedFd, reason: &str) {
    use nix::sys::socket::{MsgFlags, sendmsg};
    use nix::sys::socket::{SockType, getsockopt, sockopt};
    let report = crate::failure_report(reason);
    // On a stream channel (macOS's, or one made with `stream_pair`) the report goes in a
    // frame like every message on it.
    let bytes = match getsockopt(channel, sockopt::SockType) {
        Ok(SockType::Stream) => {
            match wg_platform::stream_frame::encode(&report, crate::MAX_MESSAGE_LEN) {
                Ok(framed) => framed,
                Err(_) => return,
            }
        }
        _ => report,
    };
    let iov = [std::io::IoSlice::new(&bytes)];
    let _ = sendmsg::<()>(
        channel.as_raw_fd(),
        &iov,
        &[],
        MsgFlags::MSG_DONTWAIT | crate::channel::SEND_FLAGS,
        None,
    );
}

/// The environment variable in which the monitor names the interface to every worker it
/// starts (the spawner passes it on to the data planes), so each log line names it.
pub const INTERFACE_ENV: &str = "WG_RS_INTERFACE";

/// The values `LOG_LEVEL` accepts (case-insensitive), for help texts and warnings.
pub const LOG_LEVELS: &str = "silent, error, warn, info, verbose (= info), debug, trace";

/// How much a process logs, from `LOG_LEVEL` as wireguard-go reads it, plus the levels
/// between and beyond (`warn`, `info`, `trace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Nothing at all (`silent`).
    Silent,
    /// Errors only.
    Error,
    /// Warnings and errors: the default.
    Warn,
    /// What happens (`info`, or wireguard-go's `verbose`): start, stop, per-peer events.
    Info,
    /// Details for debugging.
    Debug,
    /// Everything, including per-packet detail where the code has it.
    Trace,
}

impl LogLevel {
    /// The level when `LOG_LEVEL` is unset or unknown.
    pub const DEFAULT: LogLevel = LogLevel::Warn;

    /// Parses a `LOG_LEVEL` value (case-insensitive, surrounding blanks ignored); `None`
    /// for a value that is not one of [`LOG_LEVELS`].
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value.trim().to_ascii_lowercase().as_str() {
            "silent" => Self::Silent,
            "error" => Self::Error,
            "warn" | "warning" => Self::Warn,
            "info" | "verbose" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => return None,
        })
    }

    /// The level `LOG_LEVEL` asks for, and a warning if it holds a value that is not
    /// understood (then the default applies). Unset or empty means the default, silently.
    pub fn from_env() -> (Self, Option<String>) {
        let Some(value) = std::env::var_os("LOG_LEVEL") else {
            return (Self::DEFAULT, None);
        };
        let value = value.to_string_lossy();
        if value.trim().is_empty() {
            return (Self::DEFAULT, None);
        }
        match Self::parse(&value) {
            Some(level) => (level, None),
            None => (
                Self::DEFAULT,
                Some(format!(
                    "LOG_LEVEL={value:?} is not understood; accepted values: {LOG_LEVELS}; logging at the default (warn)"
                )),
            ),
        }
    }

    fn filter(self) -> tracing_subscriber::filter::LevelFilter {
        use tracing_subscriber::filter::LevelFilter;
        match self {
            Self::Silent => LevelFilter::OFF,
            Self::Error => LevelFilter::ERROR,
            Self::Warn => LevelFilter::WARN,
            Self::Info => LevelFilter::INFO,
            Self::Debug => LevelFilter::DEBUG,
            Self::Trace => LevelFilter::TRACE,
        }
    }
}

/// Writes one line to standard error in a single `write`: standard error is unbuffered, so
/// `eprintln!` writes each formatted piece separately, and the processes of one daemon share
/// the stream — their lines would interleave mid-line (a line shorter than `PIPE_BUF` written
/// at once stays whole on a pipe).
pub fn print_error_line(line: &str) {
    use std::io::Write;
    let mut whole = String::with_capacity(line.len() + 1);
    whole.push_str(line);
    whole.push('\n');
    // Nothing sensible is left to do when standard error itself fails.
    let _ = std::io::stderr().lock().write_all(whole.as_bytes());
}

/// The tag that starts every log line of a process: `wireguard-rs[IFNAME] PROCESS`, or
/// without the parts not known (the monitor before it has read its command line is plain
/// `wireguard-rs`).
pub fn log_tag(process: Option<&str>, interface: Option<&str>) -> String {
    let mut tag = String::from("wireguard-rs");
    if let Some(interface) = interface.filter(|i| !i.is_empty()) {
        tag.push('[');
        tag.extend(interface.chars().filter(|c| !c.is_control()));
        tag.push(']');
    }
    if let Some(process) = process {
        tag.push(' ');
        tag.push_str(process);
    }
    tag
}

/// One log line: time, level, the process's tag, the message and its fields.
struct LineFormat {
    tag: String,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for LineFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut writer)?;
        write!(
            writer,
            " {:>5} {}: ",
            event.metadata().level().as_str(),
            self.tag
        )?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Logging for every wireguard-rs process, configured as wireguard-go's is, by `LOG_LEVEL`
/// ([`LogLevel`]; unset: warnings and errors; `silent`: nothing). Lines go to standard
/// error, each tagged with the interface and the process ([`log_tag`]): `process` is
/// `None` for the monitor, else `keyd`, `datad` or `spawner`. An unknown `LOG_LEVEL` is
/// warned about (naming the accepted values) when `warn_unknown`: by the process the
/// administrator ran, not again by each worker. Returns the level in effect.
pub fn init_logging(
    process: Option<&str>,
    interface: Option<&str>,
    warn_unknown: bool,
) -> LogLevel {
    let (level, warning) = LogLevel::from_env();
    let _ = tracing_subscriber::fmt()
        .with_max_level(level.filter())
        .with_writer(std::io::stderr)
        .event_format(LineFormat {
            tag: log_tag(process, interface),
        })
        .try_init();
    if let Some(warning) = warning.filter(|_| warn_unknown) {
        tracing::warn!("{warning}");
    }
    level
}

/// Most crypto helper threads [`default_crypto_threads`] picks: past this, one data-plane
/// event loop cannot keep them busy.
const MAX_DEFAULT_CRYPTO_THREADS: usize = 7;

/// The data plane's default number of crypto helper threads: half the cores, minus the
/// event loop's, at most [`MAX_DEFAULT_CRYPTO_THREADS`]; none on one or two cores. The
/// other half is left to the kernel's share of each packet (TUN and UDP copies, TCP) and
/// to the applications: on a 2-core machine one helper thread cost a quarter of the
/// throughput and a third more CPU per byte (`docs/benchmarks.md`).
pub fn default_crypto_threads() -> u16 {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    crypto_threads_for(cores)
}

fn crypto_threads_for(cores: usize) -> u16 {
    let helpers = (cores / 2)
        .saturating_sub(1)
        .min(MAX_DEFAULT_CRYPTO_THREADS);
    u16::try_from(helpers).unwrap_or(0)
}

#[cfg(test)]
mod logging_tests {
    use super::{LogLevel, log_tag};

    #[test]
    fn log_levels_are_read_as_wireguard_go_reads_them_and_more() {
        for (text, level) in [
            ("silent", LogLevel::Silent),
            ("error", LogLevel::Error),
            ("warn", LogLevel::Warn),
            ("info", LogLevel::Info),
            ("verbose", LogLevel::Info),
            ("Verbose", LogLevel::Info),
            (" DEBUG ", LogLevel::Debug),
            ("trace", LogLevel::Trace),
        ] {
            assert_eq!(LogLevel::parse(text), Some(level), "{text:?}");
        }
        for text in ["", "loud", "2", "infoo"] {
            assert_eq!(LogLevel::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn every_line_names_the_interface_and_the_process() {
        assert_eq!(log_tag(Some("keyd"), Some("wg0")), "wireguard-rs[wg0] keyd");
        assert_eq!(log_tag(None, Some("wg0")), "wireguard-rs[wg0]");
        assert_eq!(log_tag(None, None), "wireguard-rs");
        assert_eq!(log_tag(Some("datad"), Some("")), "wireguard-rs datad");
        assert_eq!(log_tag(None, Some("a\nb")), "wireguard-rs[ab]");
    }
}

#[cfg(test)]
mod crypto_thread_tests {
    use super::crypto_threads_for;

    #[test]
    fn half_the_cores_minus_the_event_loop() {
        let picks: Vec<u16> = [1, 2, 3, 4, 8, 16, 64].map(crypto_threads_for).to_vec();
        assert_eq!(picks, [0, 0, 0, 1, 3, 7, 7]);
    }
}
