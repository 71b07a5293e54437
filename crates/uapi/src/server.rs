//! The UAPI socket: binding `/var/run/wireguard/IFNAME.sock`, checking who connected,
//! reading requests with bounded buffering, writing answers.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use nix::sys::stat::{Mode, umask};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use zeroize::{Zeroize, Zeroizing};

use crate::error::UapiError;
use crate::protocol::{GET_OPERATION, ParseOptions, Request, Response, SET_OPERATION, SetParser};

/// Where `wg(8)` looks for userspace interfaces.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/wireguard";

/// The longest interface name Linux allows (IFNAMSIZ - 1).
const MAX_INTERFACE_LEN: usize = 15;

/// `DIR/INTERFACE.sock`.
pub fn socket_path(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("{interface}.sock"))
}

fn check_interface_name(interface: &str) -> Result<(), UapiError> {
    let ok = !interface.is_empty()
        && interface.len() <= MAX_INTERFACE_LEN
        && interface != "."
        && interface != ".."
        && !interface
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(UapiError::InvalidInterfaceName)
    }
}

/// Binds the UAPI socket of `interface` in [`DEFAULT_SOCKET_DIR`].
pub fn bind_listener(interface: &str) -> Result<UnixListener, UapiError> {
    bind_listener_in(Path::new(DEFAULT_SOCKET_DIR), interface)
}

/// Binds `DIR/INTERFACE.sock` with mode 0600.
///
/// - `dir` is created with mode 0700 if missing. An existing `dir` keeps its mode, with a
///   warning if group or others may write to it.
/// - The socket is bound under umask 077, so it is never reachable by others, then chmod
///   0600 as well. The umask is process-wide: call this before starting other threads
///   that create files (the monitor does, at start-up).
/// - If the path exists, a connection attempt tells a live server (error
///   [`UapiError::SocketInUse`]) from a stale socket file, which is removed before
///   binding again, as wireguard-go does. Anything that is not a socket is left alone.
pub fn bind_listener_in(dir: &Path, interface: &str) -> Result<UnixListener, UapiError> {
    check_interface_name(interface)?;
    prepare_dir(dir)?;
    let path = socket_path(dir, interface);
    let socket_error = |source| UapiError::Socket {
        path: path.clone(),
        source,
    };

    let listener = match bind_private(&path) {
        Ok(listener) => listener,
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(&path).is_ok() {
                return Err(UapiError::SocketInUse { path });
            }
            let meta = std::fs::symlink_metadata(&path).map_err(socket_error)?;
            if !meta.file_type().is_socket() {
                return Err(socket_error(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "path exists and is not a socket",
                )));
            }
            tracing::info!(path = %path.display(), "removing stale UAPI socket");
            std::fs::remove_file(&path).map_err(socket_error)?;
            bind_private(&path).map_err(socket_error)?
        }
        Err(err) => return Err(socket_error(err)),
    };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(socket_error)?;
    Ok(listener)
}

/// Binds with umask 077 and restores the previous umask.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let previous = umask(Mode::from_bits_truncate(0o077));
    let result = UnixListener::bind(path);
    umask(previous);
    result
}

fn prepare_dir(dir: &Path) -> Result<(), UapiError> {
    let dir_error = |source| UapiError::Socket {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode();
            if mode & 0o022 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format_args!("{:o}", mode & 0o7777),
                    "UAPI socket directory is writable by group or others"
                );
            }
            Ok(())
        }
        Ok(_) => Err(dir_error(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        ))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_error),
        Err(err) => Err(dir_error(err)),
    }
}

/// Removes the socket file when dropped (the daemon's clean exit; `wg` treats a socket
/// nobody listens on as stale anyway).
#[derive(Debug)]
pub struct SocketFileGuard {
    path: PathBuf,
}

impl SocketFileGuard {
    /// Guards `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The guarded path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFileGuard {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(&self.path)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %err, "cannot remove UAPI socket");
        }
    }
}

/// Accepts the client only if SO_PEERCRED says it runs as root or as our effective uid.
/// Until this passes, a client may be any local user (if the socket's mode was ever
/// weakened): refuse before reading anything.
pub fn check_peer(stream: &impl AsFd) -> Result<(), UapiError> {
    check_peer_owned_by(stream, nix::unistd::geteuid().as_raw())
}

/// Accepts the client only if SO_PEERCRED says it runs as root or as `owner`, the user
/// who started the daemon (root too, normally). The key process serves UAPI under its own
/// unprivileged uid; that uid must not be accepted, so the daemon passes the owner's.
pub fn check_peer_owned_by(stream: &impl AsFd, owner: u32) -> Result<(), UapiError> {
    let uid = peer_uid(stream)?;
    if peer_allowed(uid, owner) {
        Ok(())
    } else {
        Err(UapiError::PeerRefused { uid })
    }
}

/// The uid of the client: `SO_PEERCRED` on Linux and Android.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn peer_uid(stream: &impl AsFd) -> Result<u32, UapiError> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let creds = getsockopt(stream, PeerCredentials).map_err(UapiError::PeerCredentials)?;
    Ok(creds.uid())
}

/// The uid of the client: `getpeereid` on the BSDs and Apple targets (which have no
/// `SO_PEERCRED`).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peer_uid(stream: &impl AsFd) -> Result<u32, UapiError> {
    let (uid, _gid) = nix::unistd::getpeereid(stream).map_err(UapiError::PeerCredentials)?;
    Ok(uid.as_raw())
}

/// Whether a client running as `uid` may use the socket of a daemon started by `owner`.
pub fn peer_allowed(uid: u32, owner: u32) -> bool {
    uid == 0 || uid == owner
}

/// Outcome of reading one bounded line.
enum Line {
    /// A full line is in the buffer (without `\n`).
    Complete,
    /// End of input; the buffer holds what came before it (maybe nothing).
    Eof,
    /// The line exceeds the limit; nothing more was buffered.
    TooLong,
}

/// Reads up to `\n` into `line`, never holding more than `max` bytes.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Zeroizing<Vec<u8>>,
    max: usize,
) -> Result<Line, UapiError> {
    line.clear();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], true),
            None => (available, false),
        };
        if line.len() + chunk.len() > max {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(chunk);
        let used = chunk.len() + usize::from(found);
        r.consume(used);
        if found {
            return Ok(Line::Complete);
        }
    }
}

/// The operation line is compared exactly; anything longer cannot be one.
const MAX_OPERATION_LEN: usize = 16;

/// Reads one request with the default [`ParseOptions`].
pub async fn read_request<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Request, UapiError> {
    read_request_with(r, &ParseOptions::default()).await
}

/// Reads one request, holding at most one line (`max_line_len` bytes) besides the parsed
/// result. Errors are final for the connection: answer with [`Response::for_error`] (if
/// it gives an answer) and close, since the rest of the stream is out of step. A `set` is
/// answered only after it has been read in full (the caller applies it atomically); a
/// line error is returned as soon as that line arrives, as wireguard-go answers it.
///
/// The reader's own buffer is outside this function's control; [`SecretBufReader`] is a
/// buffered reader that zeroizes it.
pub async fn read_request_with<R: AsyncBufRead + Unpin>(
    r: &mut R,
    options: &ParseOptions,
) -> Result<Request, UapiError> {
    let capacity = options.limits.max_line_len.max(MAX_OPERATION_LEN);
    let mut line = Zeroizing::new(Vec::with_capacity(capacity));

    match read_line(r, &mut line, MAX_OPERATION_LEN).await? {
        Line::Complete => {}
        Line::Eof if line.is_empty() => return Err(UapiError::Closed),
        Line::Eof | Line::TooLong => return Err(UapiError::UnknownOperation),
    }
    if line.as_slice() == GET_OPERATION {
        let next = r.fill_buf().await?.first().copied();
        return match next {
            None => Err(UapiError::IncompleteGet),
            Some(byte) => {
                r.consume(1);
                if byte == b'\n' {
                    Ok(Request::Get)
                } else {
                    Err(UapiError::GetNotTerminated)
                }
            }
        };
    }
    if line.as_slice() != SET_OPERATION {
        return Err(UapiError::UnknownOperation);
    }

    let mut parser = SetParser::new(*options);
    loop {
        match read_line(r, &mut line, options.limits.max_line_len).await? {
            Line::Complete => {
                if parser.feed_line(&line)? {
                    return Ok(Request::Set(parser.finish()));
                }
            }
            Line::Eof if line.is_empty() => return Ok(Request::Set(parser.finish())),
            Line::Eof => {
                return Err(UapiError::Truncated {
                    line: parser.line() + 1,
                });
            }
            Line::TooLong => {
                return Err(UapiError::LineTooLong {
                    line: parser.line() + 1,
                    limit: options.limits.max_line_len,
                });
            }
        }
    }
}

/// Writes an answer and flushes it.
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    response: &Response,
) -> Result<(), UapiError> {
    w.write_all(&response.to_bytes()).await?;
    w.flush().await?;
    Ok(())
}

/// Serves one connection: requests in a loop, each answered by `handler`, until the client
/// closes, stays idle for `idle_timeout` while a request is due, or sends something
/// invalid (answered with its errno when wireguard-go would answer, then closed).
///
/// Call [`check_peer`] first, and spawn one task per connection so one slow client
/// cannot hold up another. The handler returns a future that owns what it needs (for
/// instance a channel to the task that holds the configuration), so the whole connection
/// future stays `Send`.
pub async fn serve_connection<S, H, F>(
    stream: S,
    options: ParseOptions,
    idle_timeout: Duration,
    mut handler: H,
) -> Result<(), UapiError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request) -> F,
    F: Future<Output = Response>,
{
    let (read_half, mut write_half) = tokio::io::split(stream);
    let mut reader = SecretBufReader::new(read_half);
    loop {
        let request = match tokio::time::timeout(
            idle_timeout,
            read_request_with(&mut reader, &options),
        )
        .await
        {
            Err(_elapsed) => return Ok(()),
            Ok(Err(UapiError::Closed)) => return Ok(()),
            Ok(Err(err)) => {
                if let Some(response) = Response::for_error(&err) {
                    // The client may already be gone; the request error is what matters.
                    let _ = write_response(&mut write_half, &response).await;
                }
                return Err(err);
            }
            Ok(Ok(request)) => request,
        };
        let response = handler(request).await;
        write_response(&mut write_half, &response).await?;
    }
}

/// A buffered reader whose buffer is zeroized as it is consumed and on drop: `set`
/// requests carry private keys and PSKs in hex.
#[derive(Debug)]
pub struct SecretBufReader<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
}

impl<R> SecretBufReader<R> {
    /// Capacity of the read buffer.
    pub const CAPACITY: usize = 8192;

    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: vec![0u8; Self::CAPACITY].into_boxed_slice(),
            pos: 0,
            filled: 0,
        }
    }
}

impl<R> Drop for SecretBufReader<R> {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for SecretBufReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(out.remaining());
        out.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncRead + Unpin> AsyncBufRead for SecretBufReader<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.pos >= this.filled {
            let mut read_buf = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read_buf))?;
            this.filled = read_buf.filled().len();
            this.pos = 0;
        }
        Poll::Ready(Ok(&this.buf[this.pos..this.filled]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        let end = this.pos.saturating_add(amt).min(this.filled);
        this.buf[this.pos..end].zeroize();
        this.pos = end;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::error::Errno;
    use crate::protocol::Limits;

    async fn read(input: &[u8]) -> Result<Request, UapiError> {
        let mut r = SecretBufReader::new(input);
        read_request(&mut r).await
    }

    #[tokio::test]
    async fn reads_get_and_set() {
        assert_eq!(read(b"get=1\n\n").await.unwrap(), Request::Get);
        let Request::Set(s) = read(b"set=1\nlisten_port=7\n\n").await.unwrap() else {
            panic!()
        };
        assert_eq!(s.listen_port, Some(7));
    }

    #[tokio::test]
    async fn pipelined_requests_are_read_one_at_a_time() {
        let mut r = SecretBufReader::new(&b"set=1\nfwmark=3\n\nget=1\n\n"[..]);
        assert!(matches!(
            read_request(&mut r).await.unwrap(),
            Request::Set(_)
        ));
        assert_eq!(read_request(&mut r).await.unwrap(), Request::Get);
        assert!(matches!(read_request(&mut r).await, Err(UapiError::Closed)));
    }

    #[tokio::test]
    async fn stream_errors() {
        assert!(matches!(read(b"").await, Err(UapiError::Closed)));
        assert!(matches!(
            read(b"bogus=1\n\n").await,
            Err(UapiError::UnknownOperation)
        ));
        assert!(matches!(
            read(b"set=1").await,
            Err(UapiError::UnknownOperation)
        ));
        assert!(matches!(
            read(&[b'x'; 100]).await,
            Err(UapiError::UnknownOperation)
        ));
        assert!(matches!(
            read(b"get=1\n").await,
            Err(UapiError::IncompleteGet)
        ));
        assert!(matches!(
            read(b"get=1\nx").await,
            Err(UapiError::GetNotTerminated)
        ));
        let err = read(b"set=1\nfwmark=1").await.unwrap_err();
        assert!(matches!(err, UapiError::Truncated { line: 2 }));
        assert_eq!(err.errno(), Some(Errno::Protocol));
        let Request::Set(s) = read(b"set=1\nfwmark=9\n").await.unwrap() else {
            panic!()
        };
        assert_eq!(s.fwmark, Some(9));
    }

    #[tokio::test]
    async fn an_endless_line_is_cut_off_at_the_limit() {
        let options = ParseOptions {
            limits: Limits {
                max_line_len: 64,
                ..Limits::DEFAULT
            },
            resolve_scope: None,
        };
        let mut input = b"set=1\nlisten_port=".to_vec();
        input.extend(std::iter::repeat_n(b'1', 100_000));
        let mut r = SecretBufReader::new(&input[..]);
        let err = read_request_with(&mut r, &options).await.unwrap_err();
        assert!(matches!(err, UapiError::LineTooLong { line: 2, limit: 64 }));
        assert_eq!(err.errno(), Some(Errno::Io));
    }

    #[tokio::test]
    async fn secret_reader_zeroizes_consumed_bytes() {
        let mut r = SecretBufReader::new(&b"abc\ndef"[..]);
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert_eq!(line, "abc\n");
        assert_eq!(&r.buf[..4], &[0, 0, 0, 0]);
        assert_eq!(&r.buf[4..7], b"def");
    }

    #[test]
    fn interface_names() {
        for ok in ["wg0", "a", "wg-home_1", "fifteen_chars_x"] {
            assert!(check_interface_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "sixteen_chars_xx", "a b", "a\0"] {
            assert!(check_interface_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            socket_path(Path::new("/var/run/wireguard"), "wg0"),
            PathBuf::from("/var/run/wireguard/wg0.sock")
        );
    }
}
