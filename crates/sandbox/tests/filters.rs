//! Each role's seccomp filter, installed in a forked child that then attempts one
//! operation: what an attacker in that process would use is refused (the child dies of
//! `SIGSYS`), what the daemon itself uses still runs.
//!
//! The filter is compiled before the fork; the child only makes raw system calls and
//! leaves with `_exit`, so forking from the multi-threaded test harness is sound.
// fork, waitpid and raw system calls: each block says why it is sound.
// Linux only, as the crate under test.
#![cfg(target_os = "linux")]
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};

use wg_sandbox::{Role, policy};

/// The exit code of a child whose filter could not be installed.
const INSTALL_FAILED: i32 = 255;

// Linux's values (the same on x86_64 and aarch64) of constants the libc crate lacks.
/// `fcntl`: the signal sent when I/O is possible.
const F_SETSIG: libc::c_int = 10;
/// `fcntl`: the owner (thread, process or group) that receives it.
const F_SETOWN_EX: libc::c_int = 15;
/// `F_NOTIFY` event: a file in the directory was modified.
const DN_MODIFY: libc::c_long = 2;
/// `ioctl` forms of `F_SETOWN`.
const FIOSETOWN: libc::c_ulong = 0x8901;
const SIOCSPGRP: libc::c_ulong = 0x8902;
/// The capability number of `CAP_NET_ADMIN`.
const CAP_NET_ADMIN: libc::c_ulong = 12;

/// What happened to the attempt.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The filter let the call through and it succeeded.
    Succeeded,
    /// The filter let the call through; the kernel refused it with this errno.
    Failed(i32),
    /// The filter refused the call: the child was killed by `SIGSYS`.
    Refused,
}

/// Runs `op` in a child under `role`'s filter. `op` returns whether the call succeeded
/// (on failure the child reports `errno`).
fn attempt(role: Role, op: impl Fn() -> bool) -> Outcome {
    let program = policy::compile(role).expect("the filter compiles");
    // The child runs only the code below: async-signal-safe libc calls, the filter
    // installation (two system calls on a program built before the fork) and `op` (one
    // raw system call), then `_exit`; it never returns into the test harness.
    // SAFETY: forking a multi-threaded process is sound when the child does only that.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain system calls on valid arguments, in the child only: no core files
        // for the expected SIGSYS, whose default action (kill) must not be overridden.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(libc::SIGSYS, libc::SIG_DFL);
        }
        if seccompiler::apply_filter(&program).is_err() {
            // SAFETY: ends the child without running the harness's exit handlers.
            unsafe { libc::_exit(INSTALL_FAILED) }
        }
        let code = if op() {
            0
        } else {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(1)
                .clamp(1, INSTALL_FAILED - 1)
        };
        // SAFETY: as above.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is a valid out-pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS {
        return Outcome::Refused;
    }
    assert!(
        libc::WIFEXITED(status),
        "the child ended otherwise: status {status:#x}"
    );
    match libc::WEXITSTATUS(status) {
        0 => Outcome::Succeeded,
        INSTALL_FAILED => panic!("{role:?}: the filter could not be installed"),
        errno => Outcome::Failed(errno),
    }
}

fn refused(role: Role, what: &str, op: impl Fn() -> bool) {
    assert_eq!(attempt(role, op), Outcome::Refused, "{role:?}: {what}");
}

fn succeeds(role: Role, what: &str, op: impl Fn() -> bool) {
    assert_eq!(attempt(role, op), Outcome::Succeeded, "{role:?}: {what}");
}

/// Passes the filter, whatever the kernel then says (e.g. without a capability).
fn passes(role: Role, what: &str, op: impl Fn() -> bool) {
    assert_ne!(attempt(role, op), Outcome::Refused, "{role:?}: {what}");
}

const ALL: [Role; 4] = [Role::Monitor, Role::Keyd, Role::Datad, Role::Spawner];
/// The roles that never need executable memory.
const NO_EXEC: [Role; 3] = [Role::Monitor, Role::Keyd, Role::Datad];

fn fcntl(fd: RawFd, cmd: libc::c_int, arg: libc::c_long) -> bool {
    // SAFETY: fcntl with an integer argument: no memory is passed to the kernel.
    unsafe { libc::fcntl(fd, cmd, arg) >= 0 }
}

fn setsockopt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: `value` lives for the call, and its size is passed with it.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` live for the call and describe the buffer.
    unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) == 0 }
}

fn mmap_anonymous(prot: libc::c_int) -> bool {
    // SAFETY: a fresh anonymous private mapping at an address of the kernel's choosing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    p != libc::MAP_FAILED
}

/// A readable and writable page, unmapped on drop.
struct Page(*mut libc::c_void);

impl Page {
    fn new() -> Page {
        // SAFETY: a fresh anonymous private mapping at an address of the kernel's choosing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Page(p)
    }

    /// Changes the protection (in the child: its copy of the page).
    fn protect(&self, prot: libc::c_int) -> bool {
        // SAFETY: the page is ours and nothing in the child reads or runs it.
        unsafe { libc::mprotect(self.0, 4096, prot) == 0 }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: unmaps the page mapped in `new`, which nothing refers to any more.
        unsafe { libc::munmap(self.0, 4096) };
    }
}

fn datagram_socket() -> (UnixDatagram, UnixDatagram) {
    UnixDatagram::pair().expect("a socketpair")
}

#[test]
fn no_role_can_arm_signals_with_fcntl() {
    let (s, _peer) = datagram_socket();
    let fd = s.as_raw_fd();
    // An attacker would aim the signals at another process: here, the test's.
    let victim = libc::c_long::from(std::process::id());
    for role in ALL {
        refused(role, "F_SETOWN", || fcntl(fd, libc::F_SETOWN, victim));
        refused(role, "F_SETOWN_EX", || fcntl(fd, F_SETOWN_EX, 0));
        refused(role, "F_SETSIG SIGKILL", || {
            fcntl(fd, F_SETSIG, libc::SIGKILL.into())
        });
        refused(role, "F_SETFL with O_ASYNC", || {
            fcntl(fd, libc::F_SETFL, (libc::O_NONBLOCK | libc::O_ASYNC).into())
        });
        refused(role, "F_SETFL with only O_ASYNC", || {
            fcntl(fd, libc::F_SETFL, libc::O_ASYNC.into())
        });
        refused(role, "F_SETLEASE", || {
            fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK.into())
        });
        refused(role, "F_NOTIFY", || fcntl(fd, libc::F_NOTIFY, DN_MODIFY));
        refused(role, "F_SETPIPE_SZ", || {
            fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20)
        });
        refused(role, "F_DUPFD", || fcntl(fd, libc::F_DUPFD, 3));
    }
}

#[test]
fn every_role_keeps_the_fcntl_commands_it_uses() {
    let (s, _peer) = datagram_socket();
    let fd = s.as_raw_fd();
    for role in ALL {
        succeeds(role, "F_GETFL", || fcntl(fd, libc::F_GETFL, 0));
        succeeds(role, "F_SETFL O_NONBLOCK", || {
            fcntl(fd, libc::F_SETFL, (libc::O_RDWR | libc::O_NONBLOCK).into())
        });
        succeeds(role, "F_GETFD", || fcntl(fd, libc::F_GETFD, 0));
        succeeds(role, "F_SETFD FD_CLOEXEC", || {
            fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC.into())
        });
        succeeds(role, "F_SETFD 0", || fcntl(fd, libc::F_SETFD, 0));
        succeeds(role, "F_DUPFD_CLOEXEC", || {
            fcntl(fd, libc::F_DUPFD_CLOEXEC, 3)
        });
    }
}

#[test]
fn no_role_can_set_o_async_or_an_owner_with_ioctl() {
    let (s, _peer) = datagram_socket();
    let fd = s.as_raw_fd();
    let one: libc::c_int = 1;
    for role in ALL {
        // SAFETY: `one` lives for the call and is the int these requests read.
        refused(role, "FIOASYNC", || unsafe {
            libc::ioctl(fd, libc::FIOASYNC, &raw const one) == 0
        });
        // SAFETY: as above.
        refused(role, "FIOSETOWN", || unsafe {
            libc::ioctl(fd, FIOSETOWN, &raw const one) == 0
        });
        // SAFETY: as above.
        succeeds(role, "FIONBIO", || unsafe {
            libc::ioctl(fd, libc::FIONBIO, &raw const one) == 0
        });
    }
}

#[test]
fn monitor_keyd_and_datad_cannot_map_executable_memory() {
    for role in NO_EXEC {
        refused(role, "mmap PROT_EXEC", || {
            mmap_anonymous(libc::PROT_READ | libc::PROT_EXEC)
        });
        refused(role, "mmap PROT_EXEC alone", || {
            mmap_anonymous(libc::PROT_EXEC)
        });
        succeeds(role, "mmap PROT_READ|PROT_WRITE", || {
            mmap_anonymous(libc::PROT_READ | libc::PROT_WRITE)
        });
        let page = Page::new();
        refused(role, "mprotect to PROT_EXEC", || {
            page.protect(libc::PROT_READ | libc::PROT_EXEC)
        });
        succeeds(role, "mprotect to PROT_READ", || {
            page.protect(libc::PROT_READ)
        });
        succeeds(role, "mprotect to PROT_NONE (guard pages)", || {
            page.protect(libc::PROT_NONE)
        });
    }
}

#[test]
fn the_spawner_maps_code_but_never_writable_code() {
    let role = Role::Spawner;
    succeeds(role, "mmap PROT_READ|PROT_EXEC (the loader)", || {
        mmap_anonymous(libc::PROT_READ | libc::PROT_EXEC)
    });
    succeeds(role, "mmap PROT_READ|PROT_WRITE", || {
        mmap_anonymous(libc::PROT_READ | libc::PROT_WRITE)
    });
    refused(role, "mmap PROT_WRITE|PROT_EXEC", || {
        mmap_anonymous(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC)
    });
    let page = Page::new();
    succeeds(role, "mprotect to PROT_READ|PROT_EXEC", || {
        page.protect(libc::PROT_READ | libc::PROT_EXEC)
    });
    refused(role, "mprotect to PROT_WRITE|PROT_EXEC", || {
        page.protect(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC)
    });
}

#[test]
fn no_role_may_use_pkey_mprotect() {
    let page = Page::new();
    for role in ALL {
        // SAFETY: the page is ours; pkey -1 is the default key.
        refused(role, "pkey_mprotect", || unsafe {
            libc::syscall(
                libc::SYS_pkey_mprotect,
                page.0,
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                -1,
            ) == 0
        });
    }
}

#[test]
fn the_monitor_sets_only_its_own_socket_options() {
    let role = Role::Monitor;
    let udp = UdpSocket::bind(("127.0.0.1", 0)).expect("a UDP socket");
    let fd = udp.as_raw_fd();
    // SO_MARK and the *FORCE options need CAP_NET_ADMIN: without it the kernel says no,
    // but the filter must not.
    passes(role, "SO_MARK", || {
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_MARK, 0x42)
    });
    passes(role, "SO_RCVBUFFORCE", || {
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 1 << 20)
    });
    passes(role, "SO_SNDBUFFORCE", || {
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 1 << 20)
    });
    succeeds(role, "SO_RCVBUF", || {
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 1 << 20)
    });
    succeeds(role, "SO_SNDBUF", || {
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 1 << 20)
    });
    // Kernels before 5.0 lack the offloads: the filter must still let the probe through.
    passes(role, "UDP_GRO", || {
        setsockopt(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
    });
    passes(role, "getsockopt UDP_SEGMENT", || {
        getsockopt_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT)
    });
    // SAFETY: creates a socket; its descriptor is owned right away.
    let v6 = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0) };
    if v6 >= 0 {
        // SAFETY: a fresh descriptor nothing else owns.
        let v6 = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(v6) };
        let v6 = v6.as_raw_fd();
        succeeds(role, "IPV6_V6ONLY", || {
            setsockopt(v6, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)
        });
    }

    for (level, name, what) in [
        (libc::SOL_SOCKET, libc::SO_DEBUG, "SO_DEBUG"),
        (libc::SOL_SOCKET, libc::SO_REUSEPORT, "SO_REUSEPORT"),
        (libc::SOL_SOCKET, libc::SO_BROADCAST, "SO_BROADCAST"),
        (libc::SOL_SOCKET, libc::SO_PRIORITY, "SO_PRIORITY"),
        (libc::SOL_SOCKET, libc::SO_BINDTODEVICE, "SO_BINDTODEVICE"),
        (libc::IPPROTO_IP, libc::IP_TTL, "IP_TTL"),
        (libc::IPPROTO_IP, libc::IP_TRANSPARENT, "IP_TRANSPARENT"),
        (libc::IPPROTO_IP, libc::IP_HDRINCL, "IP_HDRINCL"),
        (libc::SOL_UDP, libc::UDP_SEGMENT, "setsockopt UDP_SEGMENT"),
        // The right option at the wrong level.
        (
            libc::IPPROTO_IP,
            libc::SO_MARK,
            "SO_MARK's number at IPPROTO_IP",
        ),
    ] {
        refused(role, what, || setsockopt(fd, level, name, 1));
    }
    // Every role may ask a socket's type (wg_ipc's `Channel::from_fd`), no other option.
    succeeds(role, "getsockopt SO_TYPE", || {
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)
    });
    refused(role, "getsockopt SO_RCVBUF", || {
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)
    });
}

/// `struct ifreq` naming `name`, the rest zero.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain data (a name and a union of integers and addresses), for
    // which all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// `ioctl(fd, request, &mut req)`.
fn ifreq_ioctl(fd: RawFd, request: libc::c_ulong, req: &mut libc::ifreq) -> bool {
    // SAFETY: `req` is a valid, exclusively borrowed `ifreq` for the call, the size every
    // `SIOC*IF*` request reads and writes.
    unsafe { libc::ioctl(fd, request as _, std::ptr::from_mut(req)) == 0 }
}

#[test]
fn the_monitor_reads_the_mtu_but_changes_no_link_setting() {
    let role = Role::Monitor;
    // What `wg_tun::Tun::mtu` does on every poll: a throwaway AF_INET datagram socket,
    // SIOCGIFMTU on it, close. (`lo` exists in every namespace.)
    succeeds(role, "socket + SIOCGIFMTU + close", || {
        // SAFETY: plain socket creation; the descriptor is closed below.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if s < 0 {
            return false;
        }
        let read = ifreq_ioctl(s, libc::SIOCGIFMTU, &mut ifreq("lo"));
        // SAFETY: closes the descriptor opened above, which nothing else uses.
        let closed = unsafe { libc::close(s) } == 0;
        read && closed
    });
    // The requests that change an interface stay forbidden. They name an interface that
    // does not exist, so that even a filter that let them through would change nothing.
    let udp = UdpSocket::bind(("127.0.0.1", 0)).expect("a UDP socket");
    let fd = udp.as_raw_fd();
    let absent = "wgnosuchif0";
    for (request, what) in [
        (libc::SIOCSIFMTU, "SIOCSIFMTU"),
        (libc::SIOCSIFFLAGS, "SIOCSIFFLAGS"),
        (libc::SIOCSIFNAME, "SIOCSIFNAME"),
        (libc::SIOCSIFADDR, "SIOCSIFADDR"),
        (libc::SIOCSIFHWADDR, "SIOCSIFHWADDR"),
        // Nor reads it does not need.
        (libc::SIOCGIFFLAGS, "SIOCGIFFLAGS"),
        (libc::SIOCGIFINDEX, "SIOCGIFINDEX"),
    ] {
        refused(role, what, || {
            let mut req = ifreq(absent);
            req.ifr_ifru.ifru_mtu = 1281;
            ifreq_ioctl(fd, request, &mut req)
        });
    }
    // SIOCGIFMTU passes the filter on any descriptor; here the kernel says ENODEV.
    assert_eq!(
        attempt(role, || ifreq_ioctl(
            fd,
            libc::SIOCGIFMTU,
            &mut ifreq(absent)
        )),
        Outcome::Failed(libc::ENODEV),
        "Monitor: SIOCGIFMTU on an absent interface"
    );
    // The other roles never read it.
    for role in [Role::Keyd, Role::Datad, Role::Spawner] {
        refused(role, "SIOCGIFMTU", || {
            ifreq_ioctl(fd, libc::SIOCGIFMTU, &mut ifreq("lo"))
        });
    }
}

#[test]
fn keyd_reads_only_the_peer_credentials() {
    let role = Role::Keyd;
    let (a, _b) = UnixStream::pair().expect("a socketpair");
    let fd = a.as_raw_fd();
    succeeds(role, "getsockopt SO_PEERCRED", || {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` live for the call and describe the buffer.
        unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            ) == 0
        }
    });
    // A channel's type (wg_ipc's `Channel::from_fd` on a channel keyd is handed).
    succeeds(role, "getsockopt SO_TYPE", || {
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)
    });
    refused(role, "getsockopt SO_SNDBUF", || {
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)
    });
    refused(role, "setsockopt", || {
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 1 << 20)
    });
}

#[test]
fn the_spawner_makes_no_network_sockets_and_sets_no_options() {
    let role = Role::Spawner;
    // SAFETY: plain socket creation; the child exits right after, closing it.
    refused(role, "socket(AF_INET)", || unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) >= 0
    });
    // SAFETY: as above.
    refused(role, "socket(AF_INET6)", || unsafe {
        libc::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0) >= 0
    });
    // SAFETY: as above.
    refused(role, "socket(AF_NETLINK)", || unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) >= 0
    });
    // `if_nametoindex` in the data plane's start.
    // SAFETY: as above.
    succeeds(role, "socket(AF_UNIX)", || unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) >= 0
    });
    let (s, _peer) = datagram_socket();
    let fd = s.as_raw_fd();
    refused(role, "setsockopt", || {
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 1 << 20)
    });
    // The data plane's start, which runs under this filter, asks its channel's type; no
    // other option.
    succeeds(role, "getsockopt SO_TYPE", || {
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)
    });
    refused(role, "getsockopt SO_RCVBUF", || {
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)
    });
    // SAFETY: `sa` and `len` live for the call and describe the buffer.
    refused(role, "getsockname", || unsafe {
        let mut sa: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        libc::getsockname(fd, (&raw mut sa).cast(), &mut len) == 0
    });
}

#[test]
fn the_spawner_opens_files_only_to_read_them() {
    let role = Role::Spawner;
    let path = c"/dev/null";
    for (flags, what) in [
        (libc::O_WRONLY, "O_WRONLY"),
        (libc::O_RDWR, "O_RDWR"),
        (libc::O_RDONLY | libc::O_CREAT, "O_CREAT"),
        (libc::O_RDONLY | libc::O_TRUNC, "O_TRUNC"),
        (libc::O_RDONLY | libc::O_APPEND, "O_APPEND"),
    ] {
        // SAFETY: `path` is a NUL-terminated string that lives for the call.
        refused(role, what, || unsafe {
            libc::openat(
                libc::AT_FDCWD,
                path.as_ptr(),
                flags | libc::O_CLOEXEC,
                0o600,
            ) >= 0
        });
    }
    // SAFETY: as above.
    succeeds(role, "O_RDONLY", || unsafe {
        libc::openat(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        ) >= 0
    });
}

#[test]
fn the_spawner_keeps_only_the_start_up_prctls_ioctls_and_limits() {
    let role = Role::Spawner;
    // SAFETY: prctl with integer arguments only.
    refused(role, "PR_SET_PTRACER", || unsafe {
        libc::prctl(libc::PR_SET_PTRACER, libc::PR_SET_PTRACER_ANY, 0, 0, 0) == 0
    });
    // SAFETY: as above.
    refused(role, "PR_SET_CHILD_SUBREAPER", || unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    });
    // SAFETY: as above.
    refused(role, "PR_CAP_AMBIENT_RAISE", || unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE,
            CAP_NET_ADMIN,
            0,
            0,
        ) == 0
    });
    // SAFETY: as above.
    succeeds(role, "PR_SET_DUMPABLE 0", || unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    });
    // SAFETY: as above.
    succeeds(role, "PR_SET_PDEATHSIG", || unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == 0
    });
    // SAFETY: as above.
    succeeds(role, "PR_CAP_AMBIENT_CLEAR_ALL", || unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) == 0
    });
    // SAFETY: `name` is NUL-terminated and lives for the call.
    succeeds(role, "PR_SET_NAME", || unsafe {
        libc::prctl(libc::PR_SET_NAME, c"wg-crypto-0".as_ptr(), 0, 0, 0) == 0
    });

    let (s, _peer) = datagram_socket();
    let fd = s.as_raw_fd();
    let mut word: libc::c_int = 0;
    let word = &raw mut word;
    let byte = c"x";
    // SAFETY: `byte` lives for the call; TIOCSTI reads one byte (and the socket is no
    // terminal: only the filter's answer matters).
    refused(role, "ioctl TIOCSTI", || unsafe {
        libc::ioctl(fd, libc::TIOCSTI, byte.as_ptr()) == 0
    });
    // SAFETY: `word` lives for the call; the request reads or writes one int.
    refused(role, "ioctl SIOCSPGRP", || unsafe {
        libc::ioctl(fd, SIOCSPGRP, word) == 0
    });
    // SAFETY: as above. Not a TUN device: the kernel refuses, the filter must not.
    passes(role, "ioctl TUNGETVNETHDRSZ", || unsafe {
        libc::ioctl(fd, libc::TUNGETVNETHDRSZ, word) == 0
    });

    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let limit = &raw mut limit;
    // SAFETY: reads a limit into `limit`, which lives for the call.
    succeeds(role, "prlimit64 of itself", || unsafe {
        libc::prlimit(0, libc::RLIMIT_STACK, std::ptr::null(), limit) == 0
    });
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: as above (only reads the parent's limit if allowed).
    refused(role, "prlimit64 of another process", || unsafe {
        libc::prlimit(parent, libc::RLIMIT_STACK, std::ptr::null(), limit) == 0
    });
}

#[test]
fn the_monitor_and_the_spawner_may_send_sigkill_and_nothing_else() {
    for role in [Role::Monitor, Role::Spawner] {
        sends_only_sigkill(role);
    }
}

fn sends_only_sigkill(role: Role) {
    // Signal 0 to a pid that cannot exist only checks; SIGKILL to it fails with ESRCH:
    // both reach the kernel only if the filter lets them through.
    let nobody: libc::pid_t = i32::MAX;
    // SAFETY: kill with integer arguments, aimed at a pid that does not exist.
    passes(role, "kill(SIGKILL)", || unsafe {
        libc::kill(nobody, libc::SIGKILL) == 0
    });
    for (name, sig) in [
        ("SIGSTOP", libc::SIGSTOP),
        ("SIGTERM", libc::SIGTERM),
        ("SIGUSR1", libc::SIGUSR1),
    ] {
        // SAFETY: as above.
        refused(role, &format!("kill({name})"), || unsafe {
            libc::kill(nobody, sig) == 0
        });
    }
    // SAFETY: pidfd_send_signal on an invalid descriptor: nothing is signalled.
    refused(role, "pidfd_send_signal(SIGSTOP)", || unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            -1,
            libc::SIGSTOP,
            std::ptr::null::<libc::c_void>(),
            0,
        ) == 0
    });
}
