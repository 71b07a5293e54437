//! `wireguard-rs-datad`: the data-plane worker. Started by `wireguard-rs` with its
//! channel in `WG_RS_IPC_FD`; not meant to be run by hand.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    wg_ipc::init_logging("datad");
    let fd = match wg_ipc::inherited_fd(wg_ipc::IPC_FD_ENV) {
        Ok(Some(fd)) => fd,
        Ok(None) => {
            eprintln!("wireguard-rs-datad is started by wireguard-rs; run `wireguard-rs IFNAME` instead");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("wireguard-rs-datad: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wireguard-rs-datad: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let monitor = wg_ipc::Channel::from_fd(fd).map_err(wg_datad::DatadError::Io)?;
        wg_datad::run_worker(monitor).await
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
