//! The C ABI called from Rust as C would call it, without root: a datagram socket pair
//! stands in for the TUN device. (The C program against a real TUN and wireguard-go, also
//! under valgrind, is tests/e2e/tests/ffi.rs.)
// The library takes a descriptor: Unix only (see the crate doc).
#![cfg(unix)]
// Calling `extern "C"` functions that take raw pointers is what is under test.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::ffi::{CStr, c_char, c_void};
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicUsize, Ordering};

use wireguard_rs::*;

const SETTINGS: &CStr =
    c"private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a
listen_port=0
public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33
endpoint=192.0.2.1:51820
allowed_ip=10.0.0.2/32
";

/// A fake TUN: the descriptor for the library and the app's end.
fn fake_tun() -> (RawFd, UnixDatagram) {
    let (tun, app) = UnixDatagram::pair().unwrap();
    (tun.into_raw_fd(), app)
}

fn last_error() -> String {
    // SAFETY: wgLastError returns a valid NUL-terminated string owned by the library.
    unsafe { CStr::from_ptr(wgLastError()) }
        .to_string_lossy()
        .into_owned()
}

fn config(handle: i32) -> Option<String> {
    let ptr = wgGetConfig(handle);
    if ptr.is_null() {
        return None;
    }
    // SAFETY: a non-NULL answer of wgGetConfig is a NUL-terminated string, freed once.
    let text = unsafe { CStr::from_ptr(ptr) }.to_str().unwrap().to_owned();
    // SAFETY: `ptr` came from wgGetConfig and is freed exactly once, here.
    unsafe { wgFreeString(ptr) };
    Some(text)
}

fn turn_on(settings: *const c_char) -> (i32, UnixDatagram) {
    let (fd, app) = fake_tun();
    // SAFETY: settings is NULL or a C string; fd is ours to hand over.
    (unsafe { wgTurnOn(settings, fd) }, app)
}

#[test]
fn a_tunnel_lives_from_turn_on_to_turn_off() {
    let (handle, app) = turn_on(SETTINGS.as_ptr());
    assert!(handle >= 0, "{handle}: {}", last_error());
    let text = config(handle).unwrap();
    assert!(text.contains("allowed_ip=10.0.0.2/32\n") && !text.contains("errno="));

    // SAFETY: C strings.
    let set = unsafe {
        wgSetConfig(
            handle,
            c"public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33\nallowed_ip=10.1.0.0/16\n".as_ptr(),
        )
    };
    assert_eq!(set, 0, "{}", last_error());
    assert!(config(handle).unwrap().contains("allowed_ip=10.1.0.0/16\n"));

    let v4 = wgGetSocketV4(handle);
    assert!(v4 >= 0);
    assert_eq!(wgBumpSockets(handle), 0);
    assert!(wgGetSocketV4(handle) >= 0);
    assert_eq!(wgDisableSomeRoamingForBrokenMobileSemantics(handle), 0);

    assert_eq!(wgTurnOff(handle), 0);
    // The descriptor is closed: the app's end has no peer any more.
    assert!(app.send(&[0x45, 0, 0, 20]).is_err());
    // Double turn-off and use after turn-off are refused, never undefined.
    assert_eq!(wgTurnOff(handle), -WG_EBADF);
    assert!(config(handle).is_none());
    assert!(last_error().contains(&format!("handle {handle}")));
    // SAFETY: a C string.
    assert_eq!(
        unsafe { wgSetConfig(handle, c"listen_port=0".as_ptr()) },
        -i64::from(WG_EBADF)
    );
    assert_eq!(wgGetSocketV4(handle), -1);
    assert_eq!(wgGetSocketV6(handle), -1);
    assert_eq!(wgBumpSockets(handle), -WG_EBADF);
}

#[test]
fn bad_input_is_refused_with_a_code_and_a_message_and_the_fd_is_closed() {
    let cases: [(*const c_char, i32); 4] = [
        (std::ptr::null(), -WG_EINVAL),
        (c"nonsense".as_ptr(), -WG_EPROTO),
        (c"private_key=00\n".as_ptr(), -WG_EINVAL),
        (c"listen_port=\xff\n".as_ptr(), -WG_EINVAL),
    ];
    for (settings, expected) in cases {
        let (code, app) = turn_on(settings);
        assert_eq!(code, expected, "{}", last_error());
        assert!(!last_error().is_empty());
        assert!(app.send(&[0]).is_err(), "the descriptor was not closed");
    }
    let (fd, app) = fake_tun();
    // SAFETY: a C string; fd is ours to hand over.
    let code = unsafe { wgTurnOnWithFraming(c"".as_ptr(), fd, 2) };
    assert_eq!(code, -WG_EINVAL);
    assert!(last_error().contains("framing"));
    assert!(app.send(&[0]).is_err());
    // SAFETY: a C string; a negative descriptor is refused before use.
    assert_eq!(unsafe { wgTurnOn(c"".as_ptr(), -1) }, -WG_EBADF);

    // A refused set changes nothing.
    let (handle, _app) = turn_on(c"listen_port=0\n".as_ptr());
    assert!(handle >= 0);
    let before = config(handle).unwrap();
    // SAFETY: NULL or C strings.
    unsafe {
        assert_eq!(wgSetConfig(handle, std::ptr::null()), -i64::from(WG_EINVAL));
        assert_eq!(
            wgSetConfig(handle, c"listen_port=1\nprivate_key=zz\n".as_ptr()),
            -i64::from(WG_EINVAL)
        );
    }
    assert_eq!(config(handle).unwrap(), before);
    assert_eq!(wgTurnOff(handle), 0);
    for unknown in [-1, 99_999, i32::MIN, i32::MAX] {
        assert_eq!(wgTurnOff(unknown), -WG_EBADF);
        assert!(wgGetConfig(unknown).is_null());
    }
    // SAFETY: NULL is allowed.
    unsafe { wgFreeString(std::ptr::null_mut()) };
}

#[test]
fn the_last_error_is_per_thread() {
    // SAFETY: NULL is refused.
    assert!(unsafe { wgSetConfig(-7, std::ptr::null()) } < 0);
    assert!(!last_error().is_empty());
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "");
}

#[test]
fn the_version_is_the_crate_version() {
    // SAFETY: a static C string.
    let version = unsafe { CStr::from_ptr(wgVersion()) };
    assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

unsafe extern "C" fn count(context: *mut c_void, level: i32, msg: *const c_char) {
    assert!(level == WG_LOG_VERBOSE || level == WG_LOG_ERROR);
    // SAFETY: the context is the AtomicUsize given to wgSetLogger, alive while installed;
    // msg is a C string valid during the call.
    let (lines, msg) = unsafe { (&*(context as *const AtomicUsize), CStr::from_ptr(msg)) };
    assert!(!msg.to_bytes().contains(&b'\n'));
    lines.fetch_add(1, Ordering::SeqCst);
    // Refused from inside the callback (it would wait for itself).
    assert_eq!(wgSetLogger(context, Some(count)), -WG_EDEADLK);
}

#[test]
fn the_logger_gets_lines_until_it_is_replaced() {
    let lines = Box::new(AtomicUsize::new(0));
    let context = &*lines as *const AtomicUsize as *mut c_void;
    assert_eq!(wgSetLogger(context, Some(count)), 0);
    let (handle, _app) = turn_on(c"listen_port=0\n".as_ptr());
    assert_eq!(wgTurnOff(handle), 0);
    assert!(lines.load(Ordering::SeqCst) >= 2, "turned on, turned off");
    assert_eq!(wgSetLogger(std::ptr::null_mut(), None), 0);
    let seen = lines.load(Ordering::SeqCst);
    let (handle, _app) = turn_on(c"listen_port=0\n".as_ptr());
    assert_eq!(wgTurnOff(handle), 0);
    assert_eq!(
        lines.load(Ordering::SeqCst),
        seen,
        "called after being replaced"
    );
}

#[test]
fn turning_off_while_other_threads_call_is_safe() {
    let (handle, _app) = turn_on(c"listen_port=0\n".as_ptr());
    assert!(handle >= 0);
    let callers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let ptr = wgGetConfig(handle);
                    if ptr.is_null() {
                        assert_eq!(wgGetSocketV4(handle), -1);
                        return;
                    }
                    // SAFETY: from wgGetConfig, freed once.
                    unsafe { wgFreeString(ptr) };
                }
            })
        })
        .collect();
    assert_eq!(wgTurnOff(handle), 0);
    for caller in callers {
        caller.join().unwrap();
    }
    assert_eq!(wgTurnOff(handle), -WG_EBADF);
}
