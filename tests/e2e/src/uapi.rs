//! A raw UAPI client: speaks the cross-platform text protocol on the daemon's socket
//! directly, for requests `wg(8)` would never send.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// What came back for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Everything read until the answer's terminating empty line, EOF or the timeout.
    pub text: String,
    /// The `errno=N` value, if the answer carried one.
    pub errno: Option<i64>,
    /// The server closed the connection (EOF or reset) without a complete answer.
    pub closed: bool,
    /// Nothing conclusive before the timeout.
    pub timed_out: bool,
}

/// Sends `request` and reads the answer (until `errno=N` and the empty line, EOF, or
/// `timeout`). With `half_close` the write side is shut down after the request, so the
/// server sees EOF (a request cut off by a disconnecting client).
pub fn request(
    socket: &Path,
    request: &[u8],
    half_close: bool,
    timeout: Duration,
) -> Result<Reply> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_write_timeout(Some(timeout))?;
    let deadline = Instant::now() + timeout;
    // The server may answer (and close) before it read everything: a failed write is
    // not an error here, the answer is what counts.
    let _ = s.write_all(request);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut closed = false;
    let mut timed_out = false;
    loop {
        if let Some(errno) = complete(&buf) {
            return Ok(Reply {
                text: String::from_utf8_lossy(&buf).into_owned(),
                errno: Some(errno),
                closed: false,
                timed_out: false,
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                timed_out = true;
                break;
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    Ok(Reply {
        text: String::from_utf8_lossy(&buf).into_owned(),
        errno: None,
        closed,
        timed_out,
    })
}

/// The errno of a complete answer: a line `errno=N` followed by an empty line.
fn complete(buf: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(buf).ok()?;
    let at = if text.starts_with("errno=") {
        0
    } else {
        text.find("\nerrno=")? + 1
    };
    let rest = &text[at + "errno=".len()..];
    let (num, tail) = rest.split_once('\n')?;
    tail.starts_with('\n').then(|| num.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::complete;

    #[test]
    fn finds_errno() {
        assert_eq!(complete(b"errno=0\n\n"), Some(0));
        assert_eq!(complete(b"listen_port=1\nerrno=-22\n\n"), Some(-22));
        assert_eq!(complete(b"errno=0\n"), None);
        assert_eq!(complete(b"listen_port=1\n"), None);
    }
}
