//! The start of a worker process (keyd, datad), shared so both begin the same way: logging,
//! die with the parent, adopt the channel to the monitor, close everything else, start a
//! single-threaded runtime, and hand the work a sandbox step to run once its descriptors
//! are in place and before it reads untrusted input. Also what every process starts with:
//! its logging ([`init_logging`]) and the data plane's default number of crypto threads
//! ([`default_crypto_threads`], which the monitor passes on in datad's start message).

use std::fmt::{Debug, Display};
use std::future::Future;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use wg_sandbox::{Role, SyscallReport};

use crate::{Channel, IPC_FD_ENV, SIGSYS_REPORT_PREFIX, inherited_fd};

/// A step a worker runs right before it starts serving: its sandbox.
pub type Lockdown = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Runs a worker: `binary` names it in messages, `role` picks its sandbox, and `serve`
/// does the work with the monitor channel and the sandbox step.
pub fn main<F, Fut, T, E>(binary: &'static str, role: Role, serve: F) -> ExitCode
where
    F: FnOnce(Channel, Lockdown) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: Debug,
    E: Display,
{
    let fail = |message: &dyn Display, code: u8| {
        eprintln!("{binary}: {message}");
        ExitCode::from(code)
    };
    // First: the groups the spawner executed us with, not dumpable, and die with the
    // parent — before anything reads input or starts threads.
    if let Err(e) = wg_sandbox::settle_exec_credentials() {
        return fail(&e, 1);
    }
    if let Err(e) = wg_sandbox::die_with_parent() {
        return fail(&e, 1);
    }
    init_logging(binary);
    let options = match wg_sandbox::Options::from_worker_args(std::env::args().skip(1)) {
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
            tracing::info!("{binary} stopped: {end:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{binary} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logging for every wireguard-rs process, configured as wireguard-go's is: `LOG_LEVEL`
/// is `error`, `verbose` (info) or `debug`; unset means warnings and errors; `silent`
/// turns it off. Lines go to standard error, tagged with the process.
pub fn init_logging(process: &'static str) {
    let level = match std::env::var("LOG_LEVEL").as_deref() {
        Ok("silent") => "off",
        Ok("error") => "error",
        Ok("verbose") => "info",
        Ok("debug") => "debug",
        _ => "warn",
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    tracing::debug!("{process} logging at {level}");
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
mod crypto_thread_tests {
    use super::crypto_threads_for;

    #[test]
    fn half_the_cores_minus_the_event_loop() {
        let picks: Vec<u16> = [1, 2, 3, 4, 8, 16, 64].map(crypto_threads_for).to_vec();
        assert_eq!(picks, [0, 0, 0, 1, 3, 7, 7]);
    }
}
