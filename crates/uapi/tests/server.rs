#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
// The Unix socket exists on Unix only.
#![cfg(unix)]
//! The socket layer against real Unix sockets in a temporary directory.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use wg_uapi::{
    DeviceConfig, Errno, Limits, ParseOptions, PeerRuntime, Request, Response, SecretBufReader,
    SecretKey, SocketFileGuard, UapiError, apply, bind_listener_in, check_peer, parse_get_response,
    read_request, serve_connection, socket_path, write_get, write_response,
};
use wg_wire::PublicKey;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("wg-uapi-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn own(key: &SecretKey) -> PublicKey {
    PublicKey(*key.expose_secret())
}

fn tokio_listener(listener: std::os::unix::net::UnixListener) -> tokio::net::UnixListener {
    listener.set_nonblocking(true).unwrap();
    tokio::net::UnixListener::from_std(listener).unwrap()
}

/// Reads one answer: everything up to and including the first empty line.
async fn read_answer(stream: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\n\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "connection closed after {:?}",
            String::from_utf8_lossy(&out)
        );
        out.push(byte[0]);
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn socket_file_is_0600_and_a_missing_directory_is_created_0700() {
    let tmp = TempDir::new();
    let dir = tmp.path().join("run").join("wireguard");
    let listener = bind_listener_in(&dir, "wg0").unwrap();
    let path = socket_path(&dir, "wg0");
    assert_eq!(path, dir.join("wg0.sock"));
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir), 0o700);
    drop(listener);
}

#[test]
fn an_existing_directory_keeps_its_mode() {
    let tmp = TempDir::new();
    let dir = tmp.path().join("shared");
    std::fs::DirBuilder::new().mode(0o755).create(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
    let _listener = bind_listener_in(&dir, "wg1").unwrap();
    assert_eq!(mode(&dir), 0o775);
    assert_eq!(mode(&socket_path(&dir, "wg1")), 0o600);
}

#[test]
fn stale_socket_is_replaced_and_a_live_one_is_refused() {
    let tmp = TempDir::new();
    let dir = tmp.path();
    let first = bind_listener_in(dir, "wg0").unwrap();
    // Live: someone accepts connections there.
    let err = bind_listener_in(dir, "wg0").unwrap_err();
    assert!(matches!(err, UapiError::SocketInUse { .. }), "{err}");
    assert!(err.to_string().contains("already in use"));
    // Stale: the listener is gone but the file remains.
    drop(first);
    assert!(socket_path(dir, "wg0").exists());
    let second = bind_listener_in(dir, "wg0").unwrap();
    assert_eq!(mode(&socket_path(dir, "wg0")), 0o600);
    drop(second);
}

#[test]
fn a_non_socket_file_is_left_alone() {
    let tmp = TempDir::new();
    let path = socket_path(tmp.path(), "wg0");
    std::fs::write(&path, b"precious").unwrap();
    let err = bind_listener_in(tmp.path(), "wg0").unwrap_err();
    assert!(matches!(err, UapiError::Socket { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn bad_interface_names_are_refused() {
    let tmp = TempDir::new();
    for name in ["", "../x", "a/b", "waytoolonginterface"] {
        assert!(matches!(
            bind_listener_in(tmp.path(), name),
            Err(UapiError::InvalidInterfaceName)
        ));
    }
}

#[test]
fn guard_removes_the_socket_file() {
    let tmp = TempDir::new();
    let listener = bind_listener_in(tmp.path(), "wg0").unwrap();
    let path = socket_path(tmp.path(), "wg0");
    {
        let _guard = SocketFileGuard::new(path.clone());
        assert!(path.exists());
    }
    assert!(!path.exists());
    drop(listener);
    // Dropping a guard for a file that is already gone is fine.
    drop(SocketFileGuard::new(path));
}

#[tokio::test]
async fn read_request_and_write_response_over_a_socket() {
    let tmp = TempDir::new();
    let listener = tokio_listener(bind_listener_in(tmp.path(), "wg0").unwrap());
    let path = socket_path(tmp.path(), "wg0");

    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        check_peer(&stream).unwrap();
        let (rd, mut wr) = stream.into_split();
        let mut rd = SecretBufReader::new(rd);
        let mut config = DeviceConfig::default();
        loop {
            let response = match read_request(&mut rd).await {
                Ok(Request::Set(set)) => match apply(&config, &set, own) {
                    Ok(new) => {
                        config = new;
                        Response::SetOk
                    }
                    Err(err) => Response::for_error(&err).unwrap(),
                },
                Ok(Request::Get) => Response::Get(write_get(&config, |_| PeerRuntime::default())),
                Err(UapiError::Closed) => return config,
                Err(err) => {
                    if let Some(response) = Response::for_error(&err) {
                        write_response(&mut wr, &response).await.unwrap();
                    }
                    return config;
                }
            };
            write_response(&mut wr, &response).await.unwrap();
        }
    });

    let mut client = UnixStream::connect(&path).await.unwrap();
    let key = "11".repeat(32);
    client
        .write_all(
            format!(
                "set=1\nlisten_port=51820\npublic_key={key}\nendpoint=[fe80::1%2]:51820\n\
                 allowed_ip=10.0.0.1/24\nallowed_ip=fd00::/64\n\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(read_answer(&mut client).await, "errno=0\n\n");

    client.write_all(b"get=1\n\n").await.unwrap();
    let answer = read_answer(&mut client).await;
    let parsed = parse_get_response(answer.as_bytes(), &Limits::DEFAULT).unwrap();
    assert_eq!(parsed.config.listen_port, 51820);
    assert_eq!(parsed.config.peers.len(), 1);
    assert!(answer.contains("\nendpoint=[fe80::1%2]:51820\n"));
    assert!(answer.contains("\nallowed_ip=10.0.0.0/24\nallowed_ip=fd00::/64\nerrno=0\n\n"));

    // An invalid request is answered with its (negative) errno and the connection closes.
    client
        .write_all(b"set=1\nlisten_port=99999\n\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut client).await, "errno=-22\n\n");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    let config = server.await.unwrap();
    assert_eq!(config.listen_port, 51820);
}

#[tokio::test]
async fn serve_connection_answers_and_an_idle_client_blocks_nobody() {
    let tmp = TempDir::new();
    let listener = tokio_listener(bind_listener_in(tmp.path(), "wg0").unwrap());
    let path = socket_path(tmp.path(), "wg0");

    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let (stream, _) = listener.accept().await.unwrap();
            check_peer(&stream).unwrap();
            tasks.push(tokio::spawn(async move {
                let config = Arc::new(Mutex::new(DeviceConfig::default()));
                let state = Arc::clone(&config);
                let result = serve_connection(
                    stream,
                    ParseOptions::default(),
                    Duration::from_millis(300),
                    move |request| {
                        let state = Arc::clone(&state);
                        async move {
                            let mut config = state.lock().unwrap();
                            match request {
                                Request::Get => {
                                    Response::Get(write_get(&config, |_| PeerRuntime::default()))
                                }
                                Request::Set(set) => match apply(&config, &set, own) {
                                    Ok(new) => {
                                        *config = new;
                                        Response::SetOk
                                    }
                                    Err(err) => {
                                        Response::Error(err.errno().unwrap_or(Errno::Unknown))
                                    }
                                },
                            }
                        }
                    },
                )
                .await;
                let config = config.lock().unwrap().clone();
                (result, config)
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    });

    // 1: connects and says nothing.
    let idle = UnixStream::connect(&path).await.unwrap();
    // 2: a normal client, served while 1 idles; pipelines two requests.
    let mut busy = UnixStream::connect(&path).await.unwrap();
    busy.write_all(b"set=1\nfwmark=42\n\nget=1\n\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut busy).await, "errno=0\n\n");
    assert_eq!(read_answer(&mut busy).await, "fwmark=42\nerrno=0\n\n");
    drop(busy);
    // 3: a malformed line gets EPROTO; an unknown operation would get no answer at all.
    let mut bad = UnixStream::connect(&path).await.unwrap();
    bad.write_all(b"set=1\nnoequals\n\n").await.unwrap();
    assert_eq!(read_answer(&mut bad).await, "errno=-71\n\n");

    let results = server.await.unwrap();
    drop(idle);
    assert!(results[0].0.is_ok(), "idle client timed out quietly");
    assert!(results[1].0.is_ok());
    assert_eq!(results[1].1.fwmark, 42);
    assert!(matches!(
        results[2].0,
        Err(UapiError::MissingSeparator { line: 2 })
    ));
}

#[tokio::test]
async fn unknown_operation_is_closed_without_an_answer() {
    let tmp = TempDir::new();
    let listener = tokio_listener(bind_listener_in(tmp.path(), "wg0").unwrap());
    let path = socket_path(tmp.path(), "wg0");
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve_connection(
            stream,
            ParseOptions::default(),
            Duration::from_secs(5),
            |_| async { Response::SetOk },
        )
        .await
    });
    let mut client = UnixStream::connect(&path).await.unwrap();
    client.write_all(b"bogus=1\n\n").await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert!(matches!(
        server.await.unwrap(),
        Err(UapiError::UnknownOperation)
    ));
}

#[test]
fn only_root_and_the_owner_may_connect() {
    // keyd runs as its own unprivileged user and passes the uid of whoever started the
    // daemon: its own uid (and the data plane's) must not pass.
    assert!(wg_uapi::peer_allowed(0, 0));
    assert!(wg_uapi::peer_allowed(1000, 1000));
    assert!(wg_uapi::peer_allowed(0, 1000));
    assert!(!wg_uapi::peer_allowed(999, 0), "the key process's own uid");
    assert!(!wg_uapi::peer_allowed(995, 0), "the data plane's uid");
}
