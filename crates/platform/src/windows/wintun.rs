//! Wintun, the layer-3 TUN driver for Windows, loaded from `wintun.dll` at run time.
//!
//! As with wireguard-go, the DLL is not part of this program: the user or the package
//! ships the signed `wintun.dll` from <https://www.wintun.net/> beside the executable.
//! It is loaded with `LoadLibraryExW` restricted to the application's directory and
//! System32 (never the current directory or `PATH`, where a planted DLL could wait), and
//! each function is looked up by name, so a missing or foreign DLL gives a clear error.
//!
//! Packets live in two rings shared with the driver: [`WintunTun::recv`] copies a packet
//! out of the receive ring and releases it; [`WintunTun::send`] allocates space in the send
//! ring, copies the packet in and hands it over. No framing is added: Wintun carries bare
//! IP packets.
//!
//! Wintun needs its kernel driver, which Wine lacks: only the loader's error path runs in
//! CI. The rest follows Wintun's documented API (`wintun.h`) and has not run on Windows.

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use windows_sys::Win32::Foundation::{
    ERROR_BUFFER_OVERFLOW, ERROR_HANDLE_EOF, ERROR_NO_MORE_ITEMS, FreeLibrary, GetLastError,
    HANDLE, HMODULE, WAIT_OBJECT_0,
};
use windows_sys::Win32::NetworkManagement::Ndis::NET_LUID_LH;
use windows_sys::Win32::System::LibraryLoader::{
    GetProcAddress, LOAD_LIBRARY_SEARCH_APPLICATION_DIR, LOAD_LIBRARY_SEARCH_SYSTEM32,
    LoadLibraryExW,
};
use windows_sys::Win32::System::Threading::{INFINITE, WaitForSingleObject};
use windows_sys::core::{GUID, PCWSTR};

use crate::PlatformError;
use crate::TunDevice;
use crate::pipe::to_wide;

/// The smallest ring Wintun accepts (`WINTUN_MIN_RING_CAPACITY`, 128 KiB).
pub const MIN_RING_CAPACITY: u32 = 0x2_0000;
/// The largest ring Wintun accepts (`WINTUN_MAX_RING_CAPACITY`, 64 MiB).
pub const MAX_RING_CAPACITY: u32 = 0x400_0000;
/// The ring wireguard-go asks for (8 MiB).
pub const DEFAULT_RING_CAPACITY: u32 = 0x80_0000;
/// The largest IP packet a ring carries (`WINTUN_MAX_IP_PACKET_SIZE`).
pub const MAX_IP_PACKET_SIZE: usize = 0xFFFF;
/// The tunnel type adapters are created with, as wireguard-go does ("WireGuard").
pub const TUNNEL_TYPE: &str = "WireGuard";
/// The MTU reported until set otherwise (wireguard-go's default).
pub const DEFAULT_MTU: u32 = 1420;

/// Checks a ring capacity against Wintun's rule: a power of two within the bounds.
pub fn check_ring_capacity(capacity: u32) -> Result<u32, PlatformError> {
    if capacity.is_power_of_two() && (MIN_RING_CAPACITY..=MAX_RING_CAPACITY).contains(&capacity) {
        Ok(capacity)
    } else {
        Err(PlatformError::BadRingCapacity(capacity))
    }
}

type Adapter = *mut c_void;
type Session = *mut c_void;
type CreateAdapterFn = unsafe extern "system" fn(PCWSTR, PCWSTR, *const GUID) -> Adapter;
type OpenAdapterFn = unsafe extern "system" fn(PCWSTR) -> Adapter;
type CloseAdapterFn = unsafe extern "system" fn(Adapter);
type GetAdapterLuidFn = unsafe extern "system" fn(Adapter, *mut NET_LUID_LH);
type GetRunningDriverVersionFn = unsafe extern "system" fn() -> u32;
type StartSessionFn = unsafe extern "system" fn(Adapter, u32) -> Session;
type EndSessionFn = unsafe extern "system" fn(Session);
type GetReadWaitEventFn = unsafe extern "system" fn(Session) -> HANDLE;
type ReceivePacketFn = unsafe extern "system" fn(Session, *mut u32) -> *mut u8;
type ReleaseReceivePacketFn = unsafe extern "system" fn(Session, *const u8);
type AllocateSendPacketFn = unsafe extern "system" fn(Session, u32) -> *mut u8;
type SendPacketFn = unsafe extern "system" fn(Session, *const u8);

/// The loaded `wintun.dll` and the functions this backend calls.
pub struct WintunApi {
    module: HMODULE,
    create_adapter: CreateAdapterFn,
    open_adapter: OpenAdapterFn,
    close_adapter: CloseAdapterFn,
    get_adapter_luid: GetAdapterLuidFn,
    get_running_driver_version: GetRunningDriverVersionFn,
    start_session: StartSessionFn,
    end_session: EndSessionFn,
    get_read_wait_event: GetReadWaitEventFn,
    receive_packet: ReceivePacketFn,
    release_receive_packet: ReleaseReceivePacketFn,
    allocate_send_packet: AllocateSendPacketFn,
    send_packet: SendPacketFn,
}

// The module handle and function pointers are process-wide and immutable; Wintun's
// functions may be called from any thread (its documentation).
#[allow(unsafe_code)]
// SAFETY: only immutable, process-global values, valid until Drop frees the module.
unsafe impl Send for WintunApi {}
#[allow(unsafe_code)]
// SAFETY: as above; no interior mutability.
unsafe impl Sync for WintunApi {}

/// Looks up `name` (NUL-terminated ASCII) in `module` and casts it to `F`.
///
/// # Safety
/// `F` must be the function-pointer type of the export's real signature.
#[allow(unsafe_code)]
unsafe fn symbol<F: Copy>(module: HMODULE, name: &'static str) -> Result<F, PlatformError> {
    debug_assert!(name.ends_with('\0'));
    let shown = name.trim_end_matches('\0');
    // SAFETY: `module` is a loaded module; `name` is NUL-terminated static ASCII.
    let found = unsafe { GetProcAddress(module, name.as_ptr()) };
    let Some(function) = found else {
        return Err(PlatformError::WintunFunctionMissing { name: shown });
    };
    debug_assert_eq!(std::mem::size_of::<F>(), std::mem::size_of_val(&function));
    // both are plain function pointers of the same size; the caller names the
    // export's real signature as `F`.
    // SAFETY: upheld as the lines above say.
    Ok(unsafe { std::mem::transmute_copy::<unsafe extern "system" fn() -> isize, F>(&function) })
}

impl WintunApi {
    /// Loads `wintun.dll` from the application's directory or System32.
    #[allow(unsafe_code)]
    pub fn load() -> Result<Arc<Self>, PlatformError> {
        let file = to_wide("wintun.dll");
        // SAFETY: `file` is NUL-terminated; no file handle (reserved, must be null).
        let module = unsafe {
            LoadLibraryExW(
                file.as_ptr(),
                std::ptr::null_mut(),
                LOAD_LIBRARY_SEARCH_APPLICATION_DIR | LOAD_LIBRARY_SEARCH_SYSTEM32,
            )
        };
        if module.is_null() {
            // SAFETY: reads the calling thread's last-error value.
            let code = unsafe { GetLastError() };
            return Err(PlatformError::WintunMissing { code });
        }
        // SAFETY: for every `symbol` call, the type is that of wintun.h's declaration.
        let api = unsafe {
            (|| -> Result<Self, PlatformError> {
                Ok(WintunApi {
                    module,
                    create_adapter: symbol(module, "WintunCreateAdapter\0")?,
                    open_adapter: symbol(module, "WintunOpenAdapter\0")?,
                    close_adapter: symbol(module, "WintunCloseAdapter\0")?,
                    get_adapter_luid: symbol(module, "WintunGetAdapterLUID\0")?,
                    get_running_driver_version: symbol(module, "WintunGetRunningDriverVersion\0")?,
                    start_session: symbol(module, "WintunStartSession\0")?,
                    end_session: symbol(module, "WintunEndSession\0")?,
                    get_read_wait_event: symbol(module, "WintunGetReadWaitEvent\0")?,
                    receive_packet: symbol(module, "WintunReceivePacket\0")?,
                    release_receive_packet: symbol(module, "WintunReleaseReceivePacket\0")?,
                    allocate_send_packet: symbol(module, "WintunAllocateSendPacket\0")?,
                    send_packet: symbol(module, "WintunSendPacket\0")?,
                })
            })()
        };
        match api {
            Ok(api) => Ok(Arc::new(api)),
            Err(e) => {
                // SAFETY: the module was loaded above and nothing refers to it any more.
                unsafe { FreeLibrary(module) };
                Err(e)
            }
        }
    }

    /// The version of the running Wintun driver (0 if none is loaded).
    #[allow(unsafe_code)]
    pub fn driver_version(&self) -> u32 {
        // SAFETY: a Wintun export taking no arguments.
        unsafe { (self.get_running_driver_version)() }
    }
}

impl Drop for WintunApi {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: every adapter and session holds an Arc of this value, so none is left.
        unsafe { FreeLibrary(self.module) };
    }
}

/// A Wintun adapter with a running session: the TUN device of the data plane.
pub struct WintunTun {
    api: Arc<WintunApi>,
    adapter: Adapter,
    session: Session,
    read_event: HANDLE,
    name: String,
    mtu: AtomicU32,
    deleted: AtomicBool,
}

// Wintun documents its session functions as callable from any thread; receive and
// release from one thread at a time, which `&self` users must respect (one reader).
#[allow(unsafe_code)]
// SAFETY: the handles are owned by this value and freed once, on drop.
unsafe impl Send for WintunTun {}
#[allow(unsafe_code)]
// SAFETY: Wintun's session functions are thread-safe; the counters are atomics.
unsafe impl Sync for WintunTun {}

impl WintunTun {
    /// Opens the adapter `name` if it exists, else creates it, and starts a session
    /// with a ring of `ring_capacity` bytes ([`DEFAULT_RING_CAPACITY`] as wireguard-go).
    #[allow(unsafe_code)]
    pub fn open_or_create(
        api: Arc<WintunApi>,
        name: &str,
        ring_capacity: u32,
    ) -> Result<Self, PlatformError> {
        crate::pipe::validate_interface_name(name)?;
        let capacity = check_ring_capacity(ring_capacity)?;
        let wide_name = to_wide(name);
        let wide_type = to_wide(TUNNEL_TYPE);
        // SAFETY: NUL-terminated name that outlives the call.
        let mut adapter = unsafe { (api.open_adapter)(wide_name.as_ptr()) };
        if adapter.is_null() {
            // SAFETY: NUL-terminated strings that outlive the call; no requested GUID.
            adapter = unsafe {
                (api.create_adapter)(wide_name.as_ptr(), wide_type.as_ptr(), std::ptr::null())
            };
        }
        if adapter.is_null() {
            return Err(PlatformError::last("WintunCreateAdapter"));
        }
        // SAFETY: `adapter` is the valid adapter just opened.
        let session = unsafe { (api.start_session)(adapter, capacity) };
        if session.is_null() {
            let error = PlatformError::last("WintunStartSession");
            // SAFETY: the adapter is ours and has no session.
            unsafe { (api.close_adapter)(adapter) };
            return Err(error);
        }
        // SAFETY: `session` is the valid session just started; the event belongs to it.
        let read_event = unsafe { (api.get_read_wait_event)(session) };
        Ok(WintunTun {
            api,
            adapter,
            session,
            read_event,
            name: name.to_owned(),
            mtu: AtomicU32::new(DEFAULT_MTU),
            deleted: AtomicBool::new(false),
        })
    }

    /// The adapter's LUID (for the IP Helper functions that configure addresses and MTU).
    #[allow(unsafe_code)]
    pub fn luid(&self) -> u64 {
        let mut luid = NET_LUID_LH { Value: 0 };
        // SAFETY: the adapter is open; `luid` is a valid out pointer.
        unsafe { (self.api.get_adapter_luid)(self.adapter, &mut luid) };
        // SAFETY: every bit pattern is a valid u64; the union's `Value` view.
        unsafe { luid.Value }
    }

    fn gone(&self) -> std::io::Error {
        self.deleted.store(true, Ordering::Relaxed);
        std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            format!("the Wintun adapter {} is gone", self.name),
        )
    }
}

impl TunDevice for WintunTun {
    fn name(&self) -> &str {
        &self.name
    }

    fn mtu(&self) -> std::io::Result<u32> {
        Ok(self.mtu.load(Ordering::Relaxed))
    }

    /// Records the MTU the data plane works with. Wintun has no MTU of its own: the
    /// interface's IP MTU is set by whoever configures its addresses (IP Helper), as
    /// with wireguard-go.
    fn set_mtu(&self, mtu: u32) -> std::io::Result<()> {
        self.mtu.store(mtu, Ordering::Relaxed);
        Ok(())
    }

    #[allow(unsafe_code)]
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut size = 0u32;
            // SAFETY: the session is running; `size` is a valid out pointer.
            let packet = unsafe { (self.api.receive_packet)(self.session, &mut size) };
            if !packet.is_null() {
                let len = size as usize;
                let copied = if len <= buf.len() {
                    // Wintun returned `size` readable bytes at `packet`, valid
                    // until released below; `buf` has room for them.
                    // SAFETY: upheld as the lines above say.
                    let src = unsafe { std::slice::from_raw_parts(packet, len) };
                    buf[..len].copy_from_slice(src);
                    Ok(len)
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "a {len}-byte packet does not fit the {}-byte buffer",
                            buf.len()
                        ),
                    ))
                };
                // SAFETY: `packet` came from ReceivePacket on this session, released once.
                unsafe { (self.api.release_receive_packet)(self.session, packet) };
                return copied;
            }
            // SAFETY: reads the calling thread's last-error value.
            match unsafe { GetLastError() } {
                ERROR_NO_MORE_ITEMS => {
                    // SAFETY: the session's event handle, valid while the session runs.
                    let woke = unsafe { WaitForSingleObject(self.read_event, INFINITE) };
                    if woke != WAIT_OBJECT_0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                ERROR_HANDLE_EOF => return Err(self.gone()),
                code => return Err(std::io::Error::from_raw_os_error(code as i32)),
            }
        }
    }

    #[allow(unsafe_code)]
    fn send(&self, packet: &[u8]) -> std::io::Result<usize> {
        if packet.is_empty() || packet.len() > MAX_IP_PACKET_SIZE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a {}-byte packet cannot go through Wintun", packet.len()),
            ));
        }
        // The bound above makes the length fit a u32.
        let len = packet.len() as u32;
        // SAFETY: the session is running; `len` is within Wintun's limit.
        let slot = unsafe { (self.api.allocate_send_packet)(self.session, len) };
        if slot.is_null() {
            // SAFETY: reads the calling thread's last-error value.
            return Err(match unsafe { GetLastError() } {
                ERROR_HANDLE_EOF => self.gone(),
                // The ring is full: the packet is dropped, as a full TUN queue drops it.
                ERROR_BUFFER_OVERFLOW => std::io::Error::from(std::io::ErrorKind::WouldBlock),
                code => std::io::Error::from_raw_os_error(code as i32),
            });
        }
        // SAFETY: Wintun gave `len` writable bytes at `slot`, ours until sent.
        unsafe { std::ptr::copy_nonoverlapping(packet.as_ptr(), slot, packet.len()) };
        // SAFETY: `slot` came from AllocateSendPacket on this session, sent once.
        unsafe { (self.api.send_packet)(self.session, slot) };
        Ok(packet.len())
    }

    fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Relaxed)
    }
}

impl Drop for WintunTun {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the session and adapter are ours, ended and closed once, in this order.
        unsafe {
            (self.api.end_session)(self.session);
            (self.api.close_adapter)(self.adapter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_capacity_follows_wintun_h() {
        assert!(check_ring_capacity(DEFAULT_RING_CAPACITY).is_ok());
        assert!(check_ring_capacity(128 * 1024).is_ok());
        assert!(check_ring_capacity(64 * 1024 * 1024).is_ok());
        for bad in [
            0,
            64 * 1024,
            128 * 1024 + 1,
            3 << 20,
            128 * 1024 * 1024,
            u32::MAX,
        ] {
            assert!(check_ring_capacity(bad).is_err(), "{bad:#x}");
        }
    }

    #[test]
    fn missing_dll_says_where_to_get_it() {
        // No wintun.dll beside the test binary nor in (Wine's) System32.
        match WintunApi::load() {
            Err(e @ PlatformError::WintunMissing { .. }) => {
                let message = e.to_string();
                assert!(message.contains("https://www.wintun.net/"), "{message}");
                assert!(message.contains("beside"), "{message}");
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(api) => {
                // A real Wintun is installed: it must at least answer.
                let _ = api.driver_version();
            }
        }
    }

    #[test]
    fn the_luid_union_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<NET_LUID_LH>(), 8);
    }
}
