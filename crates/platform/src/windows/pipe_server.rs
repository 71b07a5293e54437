//! The UAPI listener on Windows: one named-pipe instance per client, each protected by
//! [`crate::pipe::UAPI_PIPE_SDDL`], created with [`crate::pipe::UAPI_PIPE_RULES`].
//!
//! A Unix listener accepts many clients on one socket; a named pipe has one instance per
//! client instead. The listener keeps one instance waiting; [`UapiPipeListener::accept`]
//! waits for a client on it, creates the next instance (so a new `wg.exe` never finds the
//! name missing), and hands the connected one out as a [`PipeStream`], a blocking byte
//! stream (`Read` + `Write`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::ptr;

use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_PIPE_CONNECTED, GetLastError, INVALID_HANDLE_VALUE, LocalFree,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};
use windows_sys::Win32::Storage::FileSystem::{FILE_FLAG_FIRST_PIPE_INSTANCE, PIPE_ACCESS_DUPLEX};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS,
    PIPE_TYPE_BYTE, PIPE_UNLIMITED_INSTANCES, PIPE_WAIT,
};

use crate::PlatformError;
use crate::pipe::{self, PipeCreateRules, UAPI_PIPE_RULES, UAPI_PIPE_SDDL};

/// The pipe's buffer sizes: the OS grows them as needed; a `get` answer for a few peers
/// fits.
const PIPE_BUFFER_BYTES: u32 = 4096;

/// A security descriptor built from SDDL, freed with `LocalFree`.
pub struct SecurityDescriptor(PSECURITY_DESCRIPTOR);

impl SecurityDescriptor {
    /// Parses `sddl` with `ConvertStringSecurityDescriptorToSecurityDescriptorW`.
    #[allow(unsafe_code)]
    pub fn from_sddl(sddl: &str) -> Result<Self, PlatformError> {
        let wide = pipe::to_wide(sddl);
        let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // `wide` is NUL-terminated and outlives the call; `sd` is a valid out
        // pointer; the size out pointer may be null.
        // SAFETY: upheld as the lines above say.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                wide.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                ptr::null_mut(),
            )
        };
        if ok == 0 || sd.is_null() {
            return Err(PlatformError::last(
                "ConvertStringSecurityDescriptorToSecurityDescriptorW",
            ));
        }
        Ok(SecurityDescriptor(sd))
    }

    /// The raw descriptor, valid while `self` lives.
    pub fn as_ptr(&self) -> PSECURITY_DESCRIPTOR {
        self.0
    }
}

impl Drop for SecurityDescriptor {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // the descriptor was allocated by the SDDL conversion with LocalAlloc and
        // is freed exactly once, here.
        // SAFETY: upheld as the lines above say.
        unsafe { LocalFree(self.0) };
    }
}

// The descriptor is an immutable heap block once built; the pipe functions only read it.
#[allow(unsafe_code)]
// SAFETY: read-only memory owned by this value, freed once, on drop.
unsafe impl Send for SecurityDescriptor {}
#[allow(unsafe_code)]
// SAFETY: read-only memory owned by this value; shared references only read it.
unsafe impl Sync for SecurityDescriptor {}

/// The `dwPipeMode` word for `rules`.
pub fn pipe_mode(rules: &PipeCreateRules) -> u32 {
    let mut mode = PIPE_WAIT;
    mode |= if rules.byte_mode {
        PIPE_TYPE_BYTE | PIPE_READMODE_BYTE
    } else {
        windows_sys::Win32::System::Pipes::PIPE_TYPE_MESSAGE
            | windows_sys::Win32::System::Pipes::PIPE_READMODE_MESSAGE
    };
    if rules.reject_remote_clients {
        mode |= PIPE_REJECT_REMOTE_CLIENTS;
    }
    mode
}

/// The UAPI named-pipe listener of one interface.
pub struct UapiPipeListener {
    path: String,
    wide_path: Vec<u16>,
    descriptor: SecurityDescriptor,
    waiting: OwnedHandle,
}

impl UapiPipeListener {
    /// Creates the first instance of `\\.\pipe\ProtectedPrefix\Administrators\WireGuard\IFNAME`.
    /// Fails with [`PlatformError::PipeInUse`] if the name exists (another process owns it).
    pub fn bind(ifname: &str) -> Result<Self, PlatformError> {
        let path = pipe::uapi_pipe_path(ifname)?;
        let wide_path = pipe::to_wide(&path);
        let descriptor = SecurityDescriptor::from_sddl(UAPI_PIPE_SDDL)?;
        let waiting = create_instance(&wide_path, &descriptor, &path, true)?;
        Ok(UapiPipeListener {
            path,
            wide_path,
            descriptor,
            waiting,
        })
    }

    /// The pipe's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Waits for a client, then returns its stream; a new instance waits for the next.
    ///
    /// An error concerns one client (one that connected and left at once, for example):
    /// the listener has a fresh instance waiting again, so call `accept` again.
    #[allow(unsafe_code)]
    pub fn accept(&mut self) -> Result<PipeStream, PlatformError> {
        // `waiting` is an open pipe instance handle owned by us; a null
        // OVERLAPPED makes the call synchronous (the handle is not overlapped).
        // SAFETY: upheld as the lines above say.
        let ok = unsafe { ConnectNamedPipe(self.waiting.as_raw_handle(), ptr::null_mut()) };
        if ok == 0 {
            // SAFETY: reads the calling thread's last-error value; no memory involved.
            let code = unsafe { GetLastError() };
            // A client that opened the pipe between creation and this call is connected.
            if code != ERROR_PIPE_CONNECTED {
                // The instance is spent (its client left, or it broke): wait on a new one.
                self.waiting =
                    create_instance(&self.wide_path, &self.descriptor, &self.path, false)?;
                return Err(PlatformError::os(
                    "ConnectNamedPipe",
                    std::io::Error::from_raw_os_error(code as i32),
                    "",
                ));
            }
        }
        let next = create_instance(&self.wide_path, &self.descriptor, &self.path, false)?;
        let connected = std::mem::replace(&mut self.waiting, next);
        Ok(PipeStream(File::from(connected)))
    }
}

/// Creates one pipe instance (the first with `FILE_FLAG_FIRST_PIPE_INSTANCE`).
#[allow(unsafe_code)]
fn create_instance(
    wide_path: &[u16],
    descriptor: &SecurityDescriptor,
    path: &str,
    first: bool,
) -> Result<OwnedHandle, PlatformError> {
    let rules = UAPI_PIPE_RULES;
    let mut open_mode = PIPE_ACCESS_DUPLEX;
    if first && rules.first_instance_exclusive {
        open_mode |= FILE_FLAG_FIRST_PIPE_INSTANCE;
    }
    let instances = if rules.unlimited_instances {
        PIPE_UNLIMITED_INSTANCES
    } else {
        1
    };
    let attributes = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: descriptor.as_ptr(),
        bInheritHandle: 0,
    };
    // `wide_path` is NUL-terminated (built by `pipe::to_wide`); `attributes` and
    // the descriptor it points to live across the call.
    // SAFETY: upheld as the lines above say.
    let handle = unsafe {
        CreateNamedPipeW(
            wide_path.as_ptr(),
            open_mode,
            pipe_mode(&rules),
            instances,
            PIPE_BUFFER_BYTES,
            PIPE_BUFFER_BYTES,
            0,
            &attributes,
        )
    };
    if handle == INVALID_HANDLE_VALUE || handle.is_null() {
        // SAFETY: reads the calling thread's last-error value; no memory involved.
        let code = unsafe { GetLastError() };
        // FILE_FLAG_FIRST_PIPE_INSTANCE on an existing name fails with access denied.
        if first && code == ERROR_ACCESS_DENIED {
            return Err(PlatformError::PipeInUse {
                path: path.to_owned(),
            });
        }
        return Err(PlatformError::os(
            "CreateNamedPipeW",
            std::io::Error::from_raw_os_error(code as i32),
            "",
        ));
    }
    // SAFETY: `handle` is a valid pipe handle just returned to us and owned by no one else.
    Ok(unsafe { OwnedHandle::from_raw_handle(handle) })
}

/// A connected UAPI client: a blocking byte stream.
#[derive(Debug)]
pub struct PipeStream(File);

impl PipeStream {
    /// The pipe instance's handle (to duplicate into keyd, for example).
    pub fn into_handle(self) -> OwnedHandle {
        OwnedHandle::from(self.0)
    }
}

impl Read for PipeStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for PipeStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use windows_sys::Win32::Foundation::{GENERIC_READ, GENERIC_WRITE};
    use windows_sys::Win32::Storage::FileSystem::{
        CreateFileW, OPEN_EXISTING, SECURITY_IDENTIFICATION, SECURITY_SQOS_PRESENT,
    };

    /// Opens the pipe as `wg.exe` does (read/write, open existing).
    #[allow(unsafe_code)]
    fn open_client(path: &str) -> std::io::Result<File> {
        let wide = pipe::to_wide(path);
        // `wide` is NUL-terminated and outlives the call; no security attributes,
        // no template.
        // SAFETY: upheld as the lines above say.
        let handle = unsafe {
            CreateFileW(
                wide.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                0,
                ptr::null(),
                OPEN_EXISTING,
                SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
                ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a valid file handle just returned to us.
        Ok(File::from(unsafe { OwnedHandle::from_raw_handle(handle) }))
    }

    fn unique_ifname(tag: &str) -> String {
        format!("wgt{tag}{}", std::process::id())
    }

    #[test]
    fn the_security_descriptor_parses() {
        assert!(SecurityDescriptor::from_sddl(UAPI_PIPE_SDDL).is_ok());
        // And a malformed one does not: the parser is really consulted.
        assert!(SecurityDescriptor::from_sddl("O:SYD:P(A;;GA;;;").is_err());
    }

    #[test]
    fn pipe_mode_bits_are_the_documented_ones() {
        // winbase.h: PIPE_TYPE_BYTE 0, PIPE_READMODE_BYTE 0, PIPE_WAIT 0,
        // PIPE_REJECT_REMOTE_CLIENTS 8.
        assert_eq!(pipe_mode(&UAPI_PIPE_RULES), 0x8);
    }

    #[test]
    fn a_client_gets_its_answer() {
        let ifname = unique_ifname("a");
        let mut listener = UapiPipeListener::bind(&ifname).unwrap();
        let path = listener.path().to_owned();
        assert!(path.ends_with(&ifname));
        let server = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
            let mut stream = listener.accept()?;
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\n\n") {
                if stream.read(&mut byte)? == 0 {
                    break;
                }
                request.push(byte[0]);
            }
            stream.write_all(b"listen_port=51820\nerrno=0\n\n")?;
            stream.flush()?;
            Ok(request)
        });
        let mut client = open_client(&path).unwrap();
        client.write_all(b"get=1\n\n").unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 256];
        while !answer.ends_with(b"\n\n") {
            let n = client.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        let request = server.join().unwrap().unwrap();
        assert_eq!(request, b"get=1\n\n");
        assert_eq!(answer, b"listen_port=51820\nerrno=0\n\n");
    }

    #[test]
    fn a_second_server_for_the_same_interface_is_refused() {
        let ifname = unique_ifname("b");
        let _first = UapiPipeListener::bind(&ifname).unwrap();
        match UapiPipeListener::bind(&ifname) {
            Err(PlatformError::PipeInUse { path }) => assert!(path.ends_with(&ifname)),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a second listener was created on the same pipe name"),
        }
    }

    #[test]
    fn bad_interface_names_never_reach_the_os() {
        assert!(matches!(
            UapiPipeListener::bind(r"..\..\x"),
            Err(PlatformError::PipeName(_))
        ));
    }
}
