//! `wireguard-rs-keyd`: the key process. Started by `wireguard-rs` with its channel in
//! `WG_RS_IPC_FD`; not meant to be run by hand.
#![forbid(unsafe_code)]

use std::os::fd::AsRawFd;
use std::process::ExitCode;

use wg_sandbox::{Role, SyscallReport};

fn main() -> ExitCode {
    wg_ipc::init_logging("keyd");
    let options = match wg_sandbox::Options::from_worker_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("wireguard-rs-keyd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = wg_sandbox::die_with_parent() {
        eprintln!("wireguard-rs-keyd: {e}");
        return ExitCode::FAILURE;
    }
    let fd = match wg_ipc::inherited_fd(wg_ipc::IPC_FD_ENV) {
        Ok(Some(fd)) => fd,
        Ok(None) => {
            eprintln!(
                "wireguard-rs-keyd is started by wireguard-rs; run `wireguard-rs IFNAME` instead"
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("wireguard-rs-keyd: {e}");
            return ExitCode::from(2);
        }
    };
    let report = SyscallReport {
        fd: fd.as_raw_fd(),
        prefix: wg_ipc::SIGSYS_REPORT_PREFIX,
    };
    if let Err(e) = wg_sandbox::close_inherited_fds(&[report.fd]) {
        eprintln!("wireguard-rs-keyd: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wireguard-rs-keyd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let monitor = wg_ipc::Channel::from_fd(fd).map_err(wg_keyd::KeydError::Io)?;
        wg_keyd::run_worker(monitor, || {
            wg_sandbox::lock_down(Role::Keyd, &options, Some(report)).map_err(|e| e.to_string())?;
            wg_sandbox::attempt_forbidden_syscall_if_requested(Role::Keyd);
            Ok(())
        })
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("key process failed: {e}");
            ExitCode::FAILURE
        }
    }
}
