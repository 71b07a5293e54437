//! `wireguard-rs-keyd`: the key process. Started by `wireguard-rs` with its channel in
//! `WG_RS_IPC_FD`; not meant to be run by hand.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    wg_ipc::init_logging("keyd");
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
        wg_keyd::run_worker(monitor).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("key process failed: {e}");
            ExitCode::FAILURE
        }
    }
}
