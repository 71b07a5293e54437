//! `wireguard-rs-datad`: the data-plane worker. Started (through the spawner) by
//! `wireguard-rs` with its channel in `WG_RS_IPC_FD`; not meant to be run by hand.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    wg_ipc::worker::main(
        "wireguard-rs-datad",
        wg_sandbox::Role::Datad,
        wg_datad::run_worker,
    )
}
