//! Running external commands: the bounded, interruptible runner and the background
//! process guard live in [`wg_netns::cmd`] (shared with the end-to-end tests); this module
//! adds what only xtask needs: the signal handler, the workspace root and `cargo`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
pub(crate) use wg_netns::cmd::*;

/// Installs the signal handler that turns Ctrl-C, SIGTERM and SIGHUP into an orderly
/// unwind: the running command is killed, `?` propagates the error and the RAII guards
/// (namespaces, daemons, key files) clean up on the way out.
pub(crate) fn install_signal_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        if request_interrupt() {
            eprintln!("xtask: still cleaning up, please wait");
        } else {
            eprintln!("\nxtask: interrupted, cleaning up");
        }
    })
    .context("could not install the Ctrl-C/SIGTERM handler")
}

/// The root of the workspace (the parent of this package's directory).
pub(crate) fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The `cargo` that runs us (cargo sets `CARGO`), or the one on PATH.
pub(crate) fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Fails, naming them and how to install them, if any of `tools` is not on `PATH`.
pub(crate) fn require_tools(tools: &[&str]) -> Result<()> {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "missing tools: {}; install them with `cargo xtask setup` (as root)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Files or directories (with their contents) of this run, removed on drop if still
/// there, e.g. UAPI socket files a daemon did not remove itself, or copied binaries.
pub(crate) struct RemoveOnDrop(pub(crate) Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let removed = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else if p.exists() {
                std::fs::remove_file(p)
            } else {
                Ok(())
            };
            if let Err(e) = removed {
                eprintln!("xtask: warning: could not remove {}: {e}", p.display());
            }
        }
    }
}
