//! `wireguard-rs-keyd`: the key process. Started by `wireguard-rs` with its channel in
//! `WG_RS_IPC_FD`; not meant to be run by hand.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    wg_ipc::worker::main(
        "wireguard-rs-keyd",
        wg_sandbox::Role::Keyd,
        wg_keyd::run_worker,
    )
}
