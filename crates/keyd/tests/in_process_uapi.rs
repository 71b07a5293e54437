//! keyd's UAPI requests from the same process (`UapiSource::InProcess`): a `set` and a
//! `get` round trip without a socket, and serving ends when the sender is dropped.
// keyd's service (Linux only) is what this tests.
#![cfg(all(feature = "service", target_os = "linux"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use tokio::sync::{mpsc, oneshot};
use wg_keyd::{KeydStartup, UapiRequest, UapiSource};
use wg_uapi::Response;

async fn ask(uapi: &mpsc::Sender<UapiRequest>, text: &str) -> Response {
    let request = wg_uapi::parse_request(text.as_bytes()).unwrap();
    let (reply, answer) = oneshot::channel();
    uapi.send(UapiRequest { request, reply }).await.unwrap();
    answer.await.unwrap()
}

#[tokio::test]
async fn a_set_and_get_round_trip_without_a_socket() {
    let (keyd_datad, datad_end) = wg_ipc::Channel::memory_pair();
    let (keyd_monitor, _monitor_end) = wg_ipc::Channel::memory_pair();
    // No data plane: keyd loses it at once and answers `get` without statistics.
    drop(datad_end);
    let (uapi, requests) = mpsc::channel(4);
    let keyd = tokio::spawn(wg_keyd::serve(KeydStartup {
        interface: "test0".to_owned(),
        uapi: UapiSource::InProcess(requests),
        datad: keyd_datad,
        monitor: keyd_monitor,
        listen_port: 51820,
    }));
    let set = "set=1\n\
        private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n\
        public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n\
        endpoint=192.0.2.1:51820\n\
        allowed_ip=10.0.0.2/32\n\n";
    assert_eq!(ask(&uapi, set).await, Response::SetOk);
    let Response::Get(text) = ask(&uapi, "get=1\n\n").await else {
        panic!("not a get answer");
    };
    assert!(text.starts_with(
        "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n\
         listen_port=51820\n\
         public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\n"
    ));
    assert!(text.contains("endpoint=192.0.2.1:51820\nlast_handshake_time_sec=0\n"));
    assert!(text.ends_with("allowed_ip=10.0.0.2/32\nerrno=0\n\n"));
    // The owner is gone: keyd stops.
    drop(uapi);
    keyd.await.unwrap().unwrap();
}
