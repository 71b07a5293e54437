//! WireGuard's cross-platform configuration protocol ("UAPI",
//! <https://www.wireguard.com/xplatform/>) as `wg(8)` and wireguard-go speak it.
//!
//! **Owns:** the text protocol on `/var/run/wireguard/IFNAME.sock`: parsing `get=1` and
//! `set=1` requests into typed values ([`protocol`]), the configuration model and an
//! all-or-nothing `set` ([`config`]), the `get` answer ([`get`]), and the socket itself
//! ([`server`]: binding with mode 0600, SO_PEERCRED check, bounded reads).
//!
//! **Trusts:** nothing a client sends. A client may be any local user until
//! [`check_peer`] has accepted it (root or our own euid); every request is parsed within
//! [`Limits`] so that no input can make this crate buffer or allocate without bound, and
//! no input can panic it. A `set` is validated whole and applied to a copy: a request
//! that fails anywhere changes nothing (wireguard-go, which applies line by line, may
//! leave half a request applied). Private keys and PSKs are zeroized on drop, compared in
//! constant time, and never appear in `Debug` output, error messages or logs; the text
//! of `get` answers and `set` requests is zeroized too.
//!
//! **May depend on:** `wg-wire` (key types), `ipnet`, `thiserror`, `zeroize`, `subtle`,
//! `tracing`, `tokio` (socket I/O only) and `nix` (umask, SO_PEERCRED, euid). No
//! Curve25519 code: the caller derives our public key (see [`apply`]).
//!
//! **Platforms:** the protocol, the configuration model and `get` are plain code and
//! build everywhere. The Unix socket (`server`) exists on Unix systems only (peer
//! credentials with `SO_PEERCRED` on Linux and Android, `getpeereid` elsewhere); Windows'
//! named pipe is not here yet.
//!
//! **Feature `client`** (off by default): the client side, `write_set`,
//! `SetRequest::from_config`, `parse_get_response` and `GetResponse`, for tests,
//! fuzzing and tools. wg-keyd, which holds the private key, depends on this crate and must
//! not ship code it does not need; this crate's own tests turn the feature on through a
//! dev-dependency on itself, so a plain `cargo test` runs all of them.
//!
//! # Errors on the wire
//!
//! A failed request is answered `errno=-N` followed by the empty line: wireguard-go's
//! `ipc` constants are negative errno values and `IpcHandle` prints them unchanged
//! (`device/uapi.go`, `ipc/uapi_unix.go`; checked against wireguard-go 0.0.20220316, which
//! answers `errno=-22`). `wg` negates the number to get the errno it reports
//! (`ipc-uapi.h`: `errno = -ret`): `wg` 1.0.20210914 prints "Address already in use" for
//! `errno=-98`, and would print "Unknown error -98" for `errno=98`.
//!
//! | input | wireguard-go | here |
//! |---|---|---|
//! | first line not `get=1`/`set=1` | closes, no answer | [`UapiError::UnknownOperation`], same |
//! | `get=1` not followed by `\n` | EINVAL | same |
//! | line without `=` | EPROTO | same |
//! | unknown key, device key after `public_key`, peer key before it | EINVAL | same |
//! | bad key hex, number, `true`, endpoint, prefix; `protocol_version` ≠ 1 | EINVAL | same |
//! | more than 65 536 peers | EINVAL | same |
//! | line over the limit | EIO (Go scanner, 64 KiB) | EIO ([`Limits`]: 4 KiB) |
//! | request over the byte limit | no limit | EIO |
//! | too many allowed IPs | no limit | EINVAL |
//! | input ends mid-line | applies the fragment | EPROTO, nothing applied |
//! | listen port cannot be bound | EADDRINUSE | daemon answers [`Errno::PortInUse`] |
//!
//! # Other choices where the protocol is silent
//!
//! - Input may end at a line boundary without the empty line (as wireguard-go).
//! - A `\r` before `\n` is dropped from key lines (Go's line scanner does).
//! - Numbers are ASCII decimal, leading zeros allowed, no sign (Go's `ParseUint`);
//!   prefix lengths allow no leading zeros (Go ≥ 1.22 `netip.ParsePrefix`).
//! - Endpoints are IP literals (`netip.ParseAddrPort`): no host names, which `wg`
//!   resolves itself. A named IPv6 zone goes through [`ParseOptions::resolve_scope`].
//! - Several requests may follow each other on one connection, also right after a `set`
//!   (wireguard-go's line scanner swallows what follows a `set`); after an error the
//!   connection is closed.
//! - `get` lists peers in insertion order (wireguard-go: map order; `wg` sorts anyway).
#![forbid(unsafe_code)]

pub mod config;
mod error;
pub mod get;
mod keys;
pub mod protocol;
#[cfg(unix)]
pub mod server;

pub use config::{
    Applied, ConfigDiff, DeviceConfig, PeerConfig, PeerDiff, apply, apply_detailed, diff,
};
pub use error::{Errno, KeyName, Section, UapiError};
#[cfg(feature = "client")]
pub use get::{GetResponse, parse_get_response};
pub use get::{PeerRuntime, write_get};
pub use keys::SecretKey;
#[cfg(feature = "client")]
pub use protocol::write_set;
pub use protocol::{
    Limits, ParseOptions, PeerChange, Request, Response, ScopeResolver, SetParser, SetRequest,
    parse_request, parse_request_with,
};
#[cfg(unix)]
pub use server::{
    DEFAULT_SOCKET_DIR, SecretBufReader, SocketFileGuard, bind_listener, bind_listener_in,
    check_peer, check_peer_owned_by, peer_allowed, read_request, read_request_with,
    serve_connection, socket_path, write_response,
};
