//! Telling whoever started the daemon how its start went: the readiness pipe of the
//! background start (the command the administrator ran waits on it and exits with its
//! verdict), and systemd's notification socket (`Type=notify`: `READY=1`, `STOPPING=1`).
//!
//! The pipe carries one line: [`READY_LINE`], or `error: MESSAGE`. Anything else, or the
//! end of the pipe without a line, is a failure ([`parse_report`]).
//!
//! The notification datagram is written here rather than taken from a crate: `KEY=VALUE`
//! lines in one `AF_UNIX` datagram to the path in `NOTIFY_SOCKET` (`@name` is an abstract
//! socket: a leading NUL byte). The socket is connected when the daemon starts, before the
//! monitor's sandbox, which allows no `socket`/`connect` for `AF_UNIX` but does allow
//! `send` on a socket it already has.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable naming the readiness pipe's write end in the background child.
pub const READY_FD_ENV: &str = "WG_RS_READY_FD";
/// systemd's variable naming its notification socket.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// The readiness pipe's line for success.
pub const READY_LINE: &str = "ready";

/// What the background child said on the readiness pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// It is ready: `wg show` works.
    Ready,
    /// It failed, and says why.
    Failed(String),
    /// The pipe ended without a verdict (the child died before it could say anything).
    Silent,
}

/// Reads what the child wrote on the readiness pipe (everything up to its end).
pub fn parse_report(bytes: &[u8]) -> Report {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return Report::Silent;
    }
    if text == READY_LINE {
        return Report::Ready;
    }
    let message = text.strip_prefix("error:").unwrap_or(text).trim();
    Report::Failed(message.to_owned())
}

/// The address `NOTIFY_SOCKET` names: an absolute path, or `@name` for an abstract socket.
/// Other forms (systemd also knows `vsock:`) are refused with a reason.
pub fn notify_address(value: &OsStr) -> Result<SocketAddr, String> {
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(value)
            .map_err(|e| format!("{NOTIFY_SOCKET_ENV}={value:?}: {e}")),
        #[cfg(target_os = "linux")]
        Some(b'@') if bytes.len() > 1 => SocketAddr::from_abstract_name(&bytes[1..])
            .map_err(|e| format!("{NOTIFY_SOCKET_ENV}={value:?}: {e}")),
        _ => Err(format!(
            "{NOTIFY_SOCKET_ENV}={value:?} is neither an absolute path nor @abstract-name"
        )),
    }
}

/// One notification: `KEY=VALUE` lines. A value's line breaks become spaces, so a status
/// text cannot add fields.
pub fn notify_message(fields: &[(&str, &str)]) -> String {
    let mut message = String::new();
    for (key, value) in fields {
        message.push_str(key);
        message.push('=');
        message.extend(value.chars().map(|c| if c == '\n' { ' ' } else { c }));
        message.push('\n');
    }
    message
}

/// A connected socket to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
}

impl Notifier {
    /// Connects to `NOTIFY_SOCKET` if it is set; `Ok(None)` when it is not.
    pub fn from_env() -> Result<Option<Self>, String> {
        let Some(value) = std::env::var_os(NOTIFY_SOCKET_ENV).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let address = notify_address(&value)?;
        let socket = UnixDatagram::unbound()
            .and_then(|s| s.connect_addr(&address).map(|()| s))
            .map_err(|e| format!("cannot connect to {NOTIFY_SOCKET_ENV}={value:?}: {e}"))?;
        Ok(Some(Self { socket }))
    }

    /// Sends one notification.
    pub fn send(&self, fields: &[(&str, &str)]) -> std::io::Result<()> {
        self.socket
            .send(notify_message(fields).as_bytes())
            .map(drop)
    }

    /// `READY=1` with a status line, and `MAINPID=` when the daemon is another process
    /// than the notifying one (the background start notifies for its child).
    pub fn ready(&self, status: &str, main_pid: Option<u32>) -> std::io::Result<()> {
        let pid = main_pid.map(|p| p.to_string());
        let mut fields = vec![("READY", "1"), ("STATUS", status)];
        if let Some(pid) = &pid {
            fields.push(("MAINPID", pid));
        }
        self.send(&fields)
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) -> std::io::Result<()> {
        self.send(&[("STOPPING", "1"), ("STATUS", status)])
    }
}

/// The daemon's side of the start: the readiness pipe (background start) and systemd's
/// socket, each optional. The monitor calls [`Lifecycle::ready`] once `wg show` works,
/// and [`Lifecycle::stopping`] when it begins to stop; a failure before readiness goes
/// through [`Lifecycle::fail`].
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// The readiness pipe's write end, until the verdict is written.
    pub pipe: Option<std::fs::File>,
    /// systemd's socket. When a readiness pipe exists, the process that waits on it sends
    /// `READY=1` (it is systemd's main process); this one only says `STOPPING=1`.
    pub notifier: Option<Notifier>,
    /// What `STATUS=` says once ready.
    pub status: String,
    ready: bool,
}

impl Lifecycle {
    /// A lifecycle reporting on `pipe` (the background child's), if any.
    pub fn new(pipe: Option<std::fs::File>) -> Self {
        Self {
            pipe,
            ..Self::default()
        }
    }

    /// Whether [`Lifecycle::ready`] was called.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Whether a failure now has someone waiting to hear it on the pipe.
    pub fn has_pipe(&self) -> bool {
        self.pipe.is_some()
    }

    /// The daemon is ready: says so on the pipe (and closes it) or to systemd.
    pub fn ready(&mut self) {
        self.ready = true;
        if let Some(mut pipe) = self.pipe.take() {
            // The waiting process may be gone (interrupted): nothing to tell then.
            let _ = writeln!(pipe, "{READY_LINE}");
        } else if let Some(n) = &self.notifier
            && let Err(e) = n.ready(&self.status, None)
        {
            tracing::warn!("cannot notify systemd of readiness: {e}");
        }
    }

    /// The start failed: says why on the pipe, if there is one. Returns whether it did
    /// (then the waiting process prints it, and this one need not).
    pub fn fail(&mut self, message: &str) -> bool {
        match self.pipe.take() {
            Some(mut pipe) => {
                let line = message.replace('\n', " ");
                writeln!(pipe, "error: {line}").is_ok()
            }
            None => false,
        }
    }

    /// The daemon begins to stop: tells systemd.
    pub fn stopping(&mut self, status: &str) {
        if let Some(n) = &self.notifier {
            let _ = n.stopping(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;

    #[test]
    fn notifications_are_key_value_lines() {
        assert_eq!(
            notify_message(&[("READY", "1"), ("STATUS", "serving wg0"), ("MAINPID", "42")]),
            "READY=1\nSTATUS=serving wg0\nMAINPID=42\n"
        );
        // A status cannot smuggle in a field.
        assert_eq!(
            notify_message(&[("STATUS", "a\nREADY=1")]),
            "STATUS=a READY=1\n"
        );
        assert_eq!(notify_message(&[("STOPPING", "1")]), "STOPPING=1\n");
    }

    #[test]
    fn notify_socket_paths_and_abstract_names() {
        let path = notify_address(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        #[cfg(target_os = "linux")]
        {
            let abstract_ =
                notify_address(OsStr::new("@/org/freedesktop/systemd1/notify")).unwrap();
            assert_eq!(
                abstract_.as_abstract_name(),
                Some(&b"/org/freedesktop/systemd1/notify"[..])
            );
        }
        // Abstract names are Linux's: elsewhere `@name` is refused with the others.
        #[cfg(not(target_os = "linux"))]
        assert!(notify_address(OsStr::new("@/org/freedesktop/systemd1/notify")).is_err());
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            assert!(notify_address(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn notifications_reach_a_bound_socket() {
        let dir = std::env::temp_dir().join(format!("wg-notify-test-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.connect(&path).unwrap();
        let n = Notifier { socket: client };
        n.ready("up", Some(7)).unwrap();
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up\nMAINPID=7\n");
        n.stopping("bye").unwrap();
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=bye\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_readiness_pipe_says_ready_or_why_not() {
        assert_eq!(parse_report(b"ready\n"), Report::Ready);
        assert_eq!(
            parse_report(b"error: the key process exited\n"),
            Report::Failed("the key process exited".into())
        );
        assert_eq!(parse_report(b""), Report::Silent);
        assert_eq!(parse_report(b"\n"), Report::Silent);
        // A half-written or unexpected line is not success.
        assert_eq!(parse_report(b"rea"), Report::Failed("rea".into()));
    }

    #[test]
    fn a_lifecycle_writes_one_verdict_on_its_pipe() {
        let (reader, writer) = std::io::pipe().unwrap();
        let mut life = Lifecycle::new(Some(std::fs::File::from(std::os::fd::OwnedFd::from(
            writer,
        ))));
        assert!(life.fail("no\nway"));
        assert!(!life.fail("again"));
        life.ready();
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut { reader }, &mut text).unwrap();
        assert_eq!(parse_report(&text), Report::Failed("no way".into()));
    }
}
