//! The checked-in header is what cbindgen makes of the sources now: regenerated into a
//! temporary file and compared. cbindgen is installed by `cargo xtask setup` (a tool, not
//! a dependency: see the crate documentation).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn cbindgen() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("cbindgen"))
            .find(|p| p.is_file())
    });
    let in_cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|home| home.join("bin/cbindgen"))
        .filter(|p| p.is_file());
    on_path.or(in_cargo_home)
}

#[test]
fn the_checked_in_header_matches_the_sources() {
    const REGENERATE: &str = "cbindgen --config crates/ffi/cbindgen.toml --crate wg-ffi \
                              --output crates/ffi/include/wireguard_rs.h";
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = crate_dir.ancestors().nth(2).unwrap();
    let cbindgen = cbindgen().unwrap_or_else(|| {
        panic!(
            "cbindgen is not installed: `cargo xtask setup` (or `cargo install cbindgen \
             --locked`) installs it"
        )
    });
    let fresh = std::env::temp_dir().join(format!("wireguard_rs-{}.h", std::process::id()));
    let out = Command::new(&cbindgen)
        .current_dir(root)
        .args([
            "--quiet",
            "--config",
            "crates/ffi/cbindgen.toml",
            "--crate",
            "wg-ffi",
        ])
        .arg("--output")
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cbindgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = std::fs::read_to_string(&fresh).unwrap();
    let _ = std::fs::remove_file(&fresh);
    let checked_in = std::fs::read_to_string(crate_dir.join("include/wireguard_rs.h")).unwrap();
    if generated != checked_in {
        let line = generated
            .lines()
            .zip(checked_in.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || generated.lines().count().min(checked_in.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "crates/ffi/include/wireguard_rs.h is out of date with crates/ffi/src (first \
             difference at line {line}). The C API changed: regenerate the header from the \
             workspace root with\n    {REGENERATE}\nand commit it."
        );
    }
}
