//! The Windows backend: Wintun for the TUN device, the named-pipe UAPI endpoint, and
//! workers started with restricted tokens inside job objects.
//!
//! Each module is a thin wrapper over the documented Win32 (or Wintun) interface and
//! takes its decisions from the pure layer: [`crate::pipe`] (pipe path, security
//! descriptor) and [`crate::windows_policy`] (tokens, jobs, handles).
//!
//! What has run where: the pipe server and the pure helpers run under Wine in CI
//! (`cargo xtask wine-test`); Wintun needs its kernel driver, which Wine does not have, so
//! only its loader's "DLL missing" path runs there; [`process`] is compile-checked only
//! and has not run on Windows yet.

pub mod pipe_server;
pub mod process;
pub mod wintun;
