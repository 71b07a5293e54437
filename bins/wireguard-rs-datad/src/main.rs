//! `wireguard-rs-datad`: the data-plane worker. Started (through the spawner) by
//! `wireguard-rs` with its channel in `WG_RS_IPC_FD`; not meant to be run by hand.
#![forbid(unsafe_code)]

use std::os::fd::AsRawFd;
use std::process::ExitCode;

use wg_sandbox::{Role, SyscallReport};

fn main() -> ExitCode {
    wg_ipc::init_logging("datad");
    let options = match wg_sandbox::Options::from_worker_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("wireguard-rs-datad: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = wg_sandbox::die_with_parent() {
        eprintln!("wireguard-rs-datad: {e}");
        return ExitCode::FAILURE;
    }
    let fd = match wg_ipc::inherited_fd(wg_ipc::IPC_FD_ENV) {
        Ok(Some(fd)) => fd,
        Ok(None) => {
            eprintln!(
                "wireguard-rs-datad is started by wireguard-rs; run `wireguard-rs IFNAME` instead"
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("wireguard-rs-datad: {e}");
            return ExitCode::from(2);
        }
    };
    let report = SyscallReport {
        fd: fd.as_raw_fd(),
        prefix: wg_ipc::SIGSYS_REPORT_PREFIX,
    };
    if let Err(e) = wg_sandbox::close_inherited_fds(&[report.fd]) {
        eprintln!("wireguard-rs-datad: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wireguard-rs-datad: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let monitor = wg_ipc::Channel::from_fd(fd).map_err(wg_datad::DatadError::Io)?;
        let lockdown: wg_datad::Lockdown = Box::new(move || {
            wg_sandbox::lock_down(Role::Datad, &options, Some(report))
                .map_err(|e| e.to_string())?;
            wg_sandbox::attempt_forbidden_syscall_if_requested(Role::Datad);
            Ok(())
        });
        wg_datad::run_worker(monitor, lockdown).await
    });
    match result {
        Ok(exit) => {
            tracing::info!("data plane stopped: {exit:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("data plane failed: {e}");
            ExitCode::FAILURE
        }
    }
}
