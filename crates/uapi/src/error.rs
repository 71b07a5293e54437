//! The crate's one error type and the errno values a client sees.

use std::fmt;
use std::path::PathBuf;

/// The five error classes wireguard-go answers with (`ipc/uapi_unix.go`).
///
/// wireguard-go defines them as *negative* errno values and prints them as they are, so a
/// failed request is answered `errno=-22` (not `errno=22`); `wg(8)` negates the number again
/// (`errno = -ret` in `ipc-uapi.h`) to print the right message. [`Errno::code`] is the
/// positive POSIX value, [`Errno::wire_value`] what goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    /// `IpcErrorIO`: reading or writing failed, or an input limit was exceeded (EIO, 5).
    Io,
    /// `IpcErrorProtocol`: a line is not `key=value`, or the request was cut off (EPROTO, 71).
    Protocol,
    /// `IpcErrorInvalid`: an unknown key, a key out of context, a bad value (EINVAL, 22).
    Invalid,
    /// `IpcErrorPortInUse`: the listen port or fwmark could not be applied (EADDRINUSE, 98).
    PortInUse,
    /// `IpcErrorUnknown`: anything else (ENOANO, 55).
    Unknown,
    /// The listen port needs a privilege the daemon was started without (EACCES, 13): a
    /// port below 1024 with `--no-low-ports`. wireguard-go answers `PortInUse` here, which
    /// makes `wg` blame another program; `wg` prints this one as "Permission denied".
    PermissionDenied,
}

impl Errno {
    /// The positive errno value (Linux numbering).
    pub const fn code(self) -> i32 {
        match self {
            Errno::Io => 5,
            Errno::Protocol => 71,
            Errno::Invalid => 22,
            Errno::PortInUse => 98,
            Errno::Unknown => 55,
            Errno::PermissionDenied => 13,
        }
    }

    /// The number printed after `errno=`: the negated code, exactly as wireguard-go prints it.
    pub const fn wire_value(self) -> i32 {
        -self.code()
    }
}

/// Where in a `set` request a key appeared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Before the first `public_key=` line: device keys.
    Device,
    /// After a `public_key=` line: peer keys.
    Peer,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::Device => "device",
            Section::Peer => "peer",
        })
    }
}

/// A key name a client sent, kept for error messages only when it cannot be a secret.
///
/// A client that mistakenly pastes key material where a key name belongs must not get it
/// logged: a name is shown only if it is at most 32 characters of `[a-z0-9_]` with at
/// least one character outside the hex alphabet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyName(Option<String>);

impl KeyName {
    pub(crate) fn new(raw: &[u8]) -> Self {
        let identifier = raw.len() <= 32
            && raw
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
            && raw.iter().any(|b| matches!(b, b'g'..=b'z' | b'_'));
        if identifier {
            Self(Some(String::from_utf8_lossy(raw).into_owned()))
        } else {
            Self(None)
        }
    }

    /// The name, if it was safe to keep.
    pub fn as_str(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(name) => write!(f, "`{name}`"),
            None => f.write_str("<redacted>"),
        }
    }
}

/// Everything that can go wrong in this crate. No variant ever carries a value a client
/// sent (values may be keys); key names are filtered through [`KeyName`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UapiError {
    /// A line is longer than [`crate::Limits::max_line_len`].
    #[error("line {line} is longer than {limit} bytes")]
    LineTooLong {
        /// 1-based line number (the operation line is line 1).
        line: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The request is longer than [`crate::Limits::max_request_bytes`].
    #[error("request is longer than {limit} bytes")]
    RequestTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// A line of a `set` request has no `=`.
    #[error("line {line} is not of the form key=value")]
    MissingSeparator {
        /// 1-based line number.
        line: usize,
    },
    /// The input ended in the middle of a line.
    #[error("request ends in the middle of line {line}")]
    Truncated {
        /// 1-based line number of the unfinished line.
        line: usize,
    },
    /// Bytes follow the end of a complete request (only when parsing a whole text).
    #[error("unexpected data after the end of the request")]
    TrailingData,
    /// The first line is neither `get=1` nor `set=1`. wireguard-go closes the connection
    /// without an answer.
    #[error("unknown UAPI operation")]
    UnknownOperation,
    /// `get=1` was followed by something other than the empty line.
    #[error("get=1 is not followed by an empty line")]
    GetNotTerminated,
    /// `get=1` and then the end of input. wireguard-go closes without an answer.
    #[error("input ends after get=1")]
    IncompleteGet,
    /// The peer closed the connection before sending a request (not really an error).
    #[error("connection closed")]
    Closed,
    /// A key that exists in neither section.
    #[error("line {line}: unknown {section} key {key}")]
    UnknownKey {
        /// 1-based line number.
        line: usize,
        /// The section the key appeared in.
        section: Section,
        /// The key name, if it was safe to keep.
        key: KeyName,
    },
    /// A device key after `public_key=`, or a peer key before it.
    #[error("line {line}: `{key}` is not a {section} key")]
    KeyOutOfContext {
        /// 1-based line number.
        line: usize,
        /// The section the key appeared in.
        section: Section,
        /// The key.
        key: &'static str,
    },
    /// A known key with a value that does not parse (the value itself is not kept).
    #[error("line {line}: invalid value for `{key}`")]
    InvalidValue {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: &'static str,
    },
    /// A hand-built [`crate::SetRequest`] that no parsed request could be.
    #[error("invalid set request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: &'static str,
    },
    /// More peers than [`crate::Limits::max_peers`] in a request or in the device.
    #[error("too many peers (limit {limit})")]
    TooManyPeers {
        /// The limit in force.
        limit: usize,
    },
    /// More allowed IPs than [`crate::Limits::max_allowed_ips`] in a request or the device.
    #[error("too many allowed IPs (limit {limit})")]
    TooManyAllowedIps {
        /// The limit in force.
        limit: usize,
    },
    /// The listen port (or fwmark) could not be applied; for the daemon to report.
    #[error("listen port {port} cannot be bound")]
    PortInUse {
        /// The port that failed.
        port: u16,
    },
    /// A `get` answer reported an error (client side, feature `client`).
    #[cfg(feature = "client")]
    #[error("the device answered errno={errno}")]
    Remote {
        /// The number after `errno=`, as received.
        errno: i64,
    },
    /// Reading from or writing to the client failed.
    #[error("UAPI I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The interface name cannot name a socket file.
    #[error("invalid interface name for a UAPI socket")]
    InvalidInterfaceName,
    /// Another live process listens on the socket.
    #[error("UAPI socket {} is already in use", path.display())]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Creating the socket directory or socket failed.
    #[error("cannot create UAPI socket {}: {source}", path.display())]
    Socket {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The connecting process runs neither as root nor as the user who started the daemon.
    #[error(
        "UAPI client with uid {uid} refused: only root and the user who started the daemon may configure it"
    )]
    PeerRefused {
        /// The client's uid from SO_PEERCRED.
        uid: u32,
    },
    /// SO_PEERCRED failed.
    #[cfg(unix)]
    #[error("cannot read UAPI client credentials: {0}")]
    PeerCredentials(nix::Error),
}

impl UapiError {
    /// The errno the client is answered with, or `None` when wireguard-go sends no answer
    /// and closes the connection (unknown operation, end of input, refused client) or the
    /// error is not about a client request at all.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            UapiError::LineTooLong { .. } | UapiError::RequestTooLarge { .. } => Some(Errno::Io),
            UapiError::Io(_) => Some(Errno::Io),
            UapiError::MissingSeparator { .. }
            | UapiError::Truncated { .. }
            | UapiError::TrailingData => Some(Errno::Protocol),
            UapiError::GetNotTerminated
            | UapiError::UnknownKey { .. }
            | UapiError::KeyOutOfContext { .. }
            | UapiError::InvalidValue { .. }
            | UapiError::InvalidRequest { .. }
            | UapiError::TooManyPeers { .. }
            | UapiError::TooManyAllowedIps { .. } => Some(Errno::Invalid),
            UapiError::PortInUse { .. } => Some(Errno::PortInUse),
            UapiError::UnknownOperation
            | UapiError::IncompleteGet
            | UapiError::Closed
            | UapiError::InvalidInterfaceName
            | UapiError::SocketInUse { .. }
            | UapiError::Socket { .. }
            | UapiError::PeerRefused { .. } => None,
            #[cfg(unix)]
            UapiError::PeerCredentials(_) => None,
            #[cfg(feature = "client")]
            UapiError::Remote { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_values_match_wireguard_go() {
        assert_eq!(Errno::Io.wire_value(), -5);
        assert_eq!(Errno::Protocol.wire_value(), -71);
        assert_eq!(Errno::Invalid.wire_value(), -22);
        assert_eq!(Errno::PortInUse.wire_value(), -98);
        assert_eq!(Errno::Unknown.wire_value(), -55);
    }

    #[test]
    fn key_names_that_could_be_secrets_are_redacted() {
        assert_eq!(KeyName::new(b"listen_prot").as_str(), Some("listen_prot"));
        assert_eq!(KeyName::new(b"h1").as_str(), Some("h1"));
        assert_eq!(KeyName::new(b"deadbeef").as_str(), None);
        assert_eq!(KeyName::new(&[b'a'; 64]).as_str(), None);
        assert_eq!(KeyName::new(b"Listen").as_str(), None);
        assert_eq!(KeyName::new(b"").as_str(), None);
        assert_eq!(KeyName::new(b"x\n").as_str(), None);
    }
}
