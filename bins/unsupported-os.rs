// What a binary does on an OS it has no backend for yet: say so and exit non-zero, never
// pretend. `include!`d by the `main.rs` of each of the three binaries on every OS but
// Linux, macOS, FreeBSD and NetBSD; the table of what exists where is the README's.

/// The running OS as people write it, and what the daemon still lacks there.
fn os_and_missing() -> (&'static str, &'static str) {
    match std::env::consts::OS {
        "openbsd" => (
            "OpenBSD",
            "tun(4), the workers' IPC and their pledge/unveil sandbox",
        ),
        "windows" => (
            "Windows",
            "Wintun, the named-pipe UAPI and the workers' restricted tokens",
        ),
        other => (other, "a TUN device, the workers' IPC and a sandbox"),
    }
}

/// Prints why `program` cannot run here and returns the failure status.
fn unsupported_os(program: &str) -> std::process::ExitCode {
    let (os, missing) = os_and_missing();
    // wg-tunnel takes a TUN descriptor: Unix only.
    let instead = if cfg!(unix) {
        " An app can run a tunnel in process with the wg-tunnel library instead."
    } else {
        ""
    };
    eprintln!(
        "{program}: the wireguard-rs daemon runs on Linux, macOS, FreeBSD and NetBSD so far; on {os} it lacks \
         {missing} (see the platform table in the README).{instead}"
    );
    std::process::ExitCode::FAILURE
}
