//! Starting a worker (keyd, datad) on Windows: a restricted token, a job object, and
//! only the handles it is given.
//!
//! The steps, each from [`crate::windows_policy`]:
//! 1. `CreateRestrictedToken` from the monitor's own primary token: `DISABLE_MAX_PRIVILEGE`,
//!    the policy's groups deny-only, its restricting SIDs; then the token's integrity
//!    level is lowered (`SetTokenInformation(TokenIntegrityLevel)`).
//! 2. A job object with the policy's limits and UI restrictions.
//! 3. `CreateProcessAsUserW` suspended, with `STARTUPINFOEXW` carrying
//!    `PROC_THREAD_ATTRIBUTE_HANDLE_LIST` (exactly the granted handles are inherited, no
//!    others) and `PROC_THREAD_ATTRIBUTE_CHILD_PROCESS_POLICY`; the handle values travel in
//!    the environment variable [`crate::windows_policy::HANDLES_ENV`] of a minimal
//!    environment.
//! 4. The process joins the job before its first instruction, then its thread resumes.
//!
//! **Status:** compile-checked for `x86_64-pc-windows-gnu`; it has not run on Windows, and
//! Wine does not implement restricted tokens, so CI runs only its pure helpers.

use std::ffi::{OsStr, c_void};
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::path::Path;
use std::ptr;

use windows_sys::Win32::Foundation::{
    HANDLE, HANDLE_FLAG_INHERIT, LocalFree, SetHandleInformation,
};
use windows_sys::Win32::Security::Authorization::ConvertStringSidToSidW;
use windows_sys::Win32::Security::{
    CreateRestrictedToken, DISABLE_MAX_PRIVILEGE, GetLengthSid, GetTokenInformation, PSID,
    SID_AND_ATTRIBUTES, SetTokenInformation, TOKEN_ADJUST_DEFAULT, TOKEN_ASSIGN_PRIMARY,
    TOKEN_DUPLICATE, TOKEN_GROUPS, TOKEN_MANDATORY_LABEL, TOKEN_QUERY, TOKEN_USER, TokenGroups,
    TokenIntegrityLevel, TokenUser,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOBOBJECT_BASIC_UI_RESTRICTIONS,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectBasicUIRestrictions,
    JobObjectExtendedLimitInformation, SetInformationJobObject,
};
use windows_sys::Win32::System::SystemServices::{SE_GROUP_INTEGRITY, SE_GROUP_LOGON_ID};
use windows_sys::Win32::System::Threading::{
    CREATE_NO_WINDOW, CREATE_SUSPENDED, CREATE_UNICODE_ENVIRONMENT, CreateProcessAsUserW,
    DeleteProcThreadAttributeList, EXTENDED_STARTUPINFO_PRESENT, GetCurrentProcess,
    InitializeProcThreadAttributeList, LPPROC_THREAD_ATTRIBUTE_LIST, OpenProcessToken,
    PROC_THREAD_ATTRIBUTE_CHILD_PROCESS_POLICY, PROC_THREAD_ATTRIBUTE_HANDLE_LIST,
    PROCESS_INFORMATION, ResumeThread, STARTUPINFOEXW, TerminateProcess, UpdateProcThreadAttribute,
};

use crate::PlatformError;
use crate::Role;
use crate::windows_policy::{
    CHILD_PROCESS_RESTRICTED, HANDLES_ENV, HandleKind, JobPolicy, RolePolicy, Sid, TokenPolicy,
    encode_handle_list, policy,
};

/// Environment variables a worker keeps from the monitor: Winsock and the system DLLs
/// need `SystemRoot`; the log level is the user's choice.
const KEPT_ENVIRONMENT: [&str; 2] = ["SystemRoot", "LOG_LEVEL"];

/// A started worker: its process and the job that kills it when this value is dropped.
pub struct Worker {
    /// The worker's process handle (to wait on it, or terminate it).
    pub process: OwnedHandle,
    /// The job; closing it kills the worker (`KILL_ON_JOB_CLOSE`).
    pub job: OwnedHandle,
    /// The worker's process id.
    pub pid: u32,
}

/// Quotes one argument for a Windows command line, following the rules the C runtime
/// (and Rust's std) use to split it again: backslashes are literal unless they precede a
/// quote, where they are doubled; quotes are escaped; arguments with spaces, tabs or
/// nothing are wrapped in quotes.
pub fn quote_arg(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '\t', '\n', '\u{b}', '"']) {
        return arg.to_owned();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    let mut backslashes = 0usize;
    for ch in arg.chars() {
        match ch {
            '\\' => backslashes += 1,
            '"' => {
                out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            _ => {
                out.extend(std::iter::repeat_n('\\', backslashes));
                out.push(ch);
                backslashes = 0;
            }
        }
    }
    out.extend(std::iter::repeat_n('\\', backslashes * 2));
    out.push('"');
    out
}

/// A `CREATE_UNICODE_ENVIRONMENT` block: `NAME=value\0` entries sorted by name
/// (case-insensitively, as Windows requires), then a final `\0`.
pub fn environment_block(vars: &[(String, String)]) -> Vec<u16> {
    let mut sorted: Vec<&(String, String)> = vars.iter().collect();
    sorted.sort_by_key(|(name, _)| name.to_uppercase());
    let mut block = Vec::new();
    for (name, value) in sorted {
        block.extend(format!("{name}={value}").encode_utf16());
        block.push(0);
    }
    if block.is_empty() {
        block.push(0);
    }
    block.push(0);
    block
}

/// Starts `exe` with `args` as `role`, handing it exactly `handles`.
#[allow(unsafe_code)]
pub fn start_worker(
    role: Role,
    exe: &Path,
    args: &[&str],
    handles: &[(HandleKind, BorrowedHandle<'_>)],
) -> Result<Worker, PlatformError> {
    let rules: &RolePolicy = policy(role).ok_or(PlatformError::NoPolicy(role))?;
    let token = restricted_token(&rules.token)?;
    let job = job_object(&rules.job)?;

    let raw_handles: Vec<HANDLE> = handles.iter().map(|(_, h)| h.as_raw_handle()).collect();
    for &h in &raw_handles {
        // SAFETY: `h` is a live handle borrowed for this call; only its inherit flag changes.
        if unsafe { SetHandleInformation(h, HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT) } == 0 {
            return Err(PlatformError::last("SetHandleInformation"));
        }
    }
    let list: Vec<(HandleKind, u64)> = handles
        .iter()
        .map(|(k, h)| (*k, h.as_raw_handle() as usize as u64))
        .collect();
    let mut vars: Vec<(String, String)> = KEPT_ENVIRONMENT
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| ((*name).to_owned(), v)))
        .collect();
    vars.push((HANDLES_ENV.to_owned(), encode_handle_list(&list)));
    let mut environment = environment_block(&vars);

    let exe_wide: Vec<u16> = exe.as_os_str().encode_wide().chain(Some(0)).collect();
    let mut line = quote_arg(&exe.to_string_lossy());
    for a in args {
        line.push(' ');
        line.push_str(&quote_arg(a));
    }
    let mut command_line: Vec<u16> = OsStr::new(&line).encode_wide().chain(Some(0)).collect();

    let mut attributes = AttributeList::new(2)?;
    attributes.set(
        PROC_THREAD_ATTRIBUTE_HANDLE_LIST as usize,
        raw_handles.as_ptr().cast(),
        std::mem::size_of_val(raw_handles.as_slice()),
    )?;
    let child_policy: u32 = if rules.job.no_child_processes {
        CHILD_PROCESS_RESTRICTED
    } else {
        0
    };
    attributes.set(
        PROC_THREAD_ATTRIBUTE_CHILD_PROCESS_POLICY as usize,
        (&raw const child_policy).cast(),
        std::mem::size_of::<u32>(),
    )?;

    // SAFETY: STARTUPINFOEXW is plain data; all-zero is its documented empty value.
    let mut startup: STARTUPINFOEXW = unsafe { std::mem::zeroed() };
    startup.StartupInfo.cb = std::mem::size_of::<STARTUPINFOEXW>() as u32;
    startup.lpAttributeList = attributes.as_ptr();
    // SAFETY: PROCESS_INFORMATION is plain data filled by the call.
    let mut info: PROCESS_INFORMATION = unsafe { std::mem::zeroed() };
    // every pointer is valid for the call: NUL-terminated wide strings (the
    // command line mutable, as the API requires), a double-NUL environment block, the
    // attribute list initialised above and alive until after the call.
    // SAFETY: upheld as the lines above say.
    let ok = unsafe {
        CreateProcessAsUserW(
            token.as_raw_handle(),
            exe_wide.as_ptr(),
            command_line.as_mut_ptr(),
            ptr::null(),
            ptr::null(),
            1,
            CREATE_SUSPENDED
                | EXTENDED_STARTUPINFO_PRESENT
                | CREATE_UNICODE_ENVIRONMENT
                | CREATE_NO_WINDOW,
            environment.as_mut_ptr().cast::<c_void>(),
            ptr::null(),
            &startup.StartupInfo,
            &mut info,
        )
    };
    if ok == 0 {
        return Err(PlatformError::last("CreateProcessAsUserW"));
    }
    // SAFETY: both handles were just returned by CreateProcessAsUserW and are ours.
    let (process, thread) = unsafe {
        (
            OwnedHandle::from_raw_handle(info.hProcess),
            OwnedHandle::from_raw_handle(info.hThread),
        )
    };
    // SAFETY: live job and process handles.
    if unsafe { AssignProcessToJobObject(job.as_raw_handle(), process.as_raw_handle()) } == 0 {
        let error = PlatformError::last("AssignProcessToJobObject");
        // SAFETY: our suspended child, which must not run outside its job.
        unsafe { TerminateProcess(process.as_raw_handle(), 1) };
        return Err(error);
    }
    // SAFETY: the suspended primary thread of our child.
    if unsafe { ResumeThread(thread.as_raw_handle()) } == u32::MAX {
        let error = PlatformError::last("ResumeThread");
        // SAFETY: our child, which never ran.
        unsafe { TerminateProcess(process.as_raw_handle(), 1) };
        return Err(error);
    }
    Ok(Worker {
        process,
        job,
        pid: info.dwProcessId,
    })
}

/// A `PROC_THREAD_ATTRIBUTE_LIST` in memory we own.
struct AttributeList {
    // usize-aligned storage, as the opaque list holds pointers.
    storage: Vec<usize>,
}

impl AttributeList {
    #[allow(unsafe_code)]
    fn new(count: u32) -> Result<Self, PlatformError> {
        let mut bytes = 0usize;
        // the documented size query: null list, valid out pointer; it fails with
        // ERROR_INSUFFICIENT_BUFFER by design.
        // SAFETY: upheld as the lines above say.
        unsafe { InitializeProcThreadAttributeList(ptr::null_mut(), count, 0, &mut bytes) };
        let words = bytes.div_ceil(std::mem::size_of::<usize>()).max(1);
        let mut list = AttributeList {
            storage: vec![0; words],
        };
        // SAFETY: `storage` has at least `bytes` bytes, aligned for pointers.
        if unsafe { InitializeProcThreadAttributeList(list.as_ptr(), count, 0, &mut bytes) } == 0 {
            // Not initialised: forget it so Drop does not delete it.
            list.storage.clear();
            return Err(PlatformError::last("InitializeProcThreadAttributeList"));
        }
        Ok(list)
    }

    fn as_ptr(&mut self) -> LPPROC_THREAD_ATTRIBUTE_LIST {
        self.storage.as_mut_ptr().cast()
    }

    /// Sets `attribute`; `value` must stay valid until the process is created.
    #[allow(unsafe_code)]
    fn set(
        &mut self,
        attribute: usize,
        value: *const c_void,
        size: usize,
    ) -> Result<(), PlatformError> {
        // SAFETY: an initialised list; the caller keeps `value` alive for the list's use.
        let ok = unsafe {
            UpdateProcThreadAttribute(
                self.as_ptr(),
                0,
                attribute,
                value,
                size,
                ptr::null_mut(),
                ptr::null(),
            )
        };
        if ok == 0 {
            return Err(PlatformError::last("UpdateProcThreadAttribute"));
        }
        Ok(())
    }
}

impl Drop for AttributeList {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if !self.storage.is_empty() {
            // SAFETY: the list was initialised and is deleted once.
            unsafe { DeleteProcThreadAttributeList(self.as_ptr()) };
        }
    }
}

/// A SID from `ConvertStringSidToSidW` (freed with `LocalFree`) or copied from a token.
enum OwnedSid {
    Local(PSID),
    Copied(Vec<u8>),
}

impl OwnedSid {
    #[allow(unsafe_code)]
    fn from_string(text: &str) -> Result<Self, PlatformError> {
        let wide = crate::pipe::to_wide(text);
        let mut sid: PSID = ptr::null_mut();
        // SAFETY: NUL-terminated string; valid out pointer.
        if unsafe { ConvertStringSidToSidW(wide.as_ptr(), &mut sid) } == 0 {
            return Err(PlatformError::last("ConvertStringSidToSidW"));
        }
        Ok(OwnedSid::Local(sid))
    }

    /// Copies the SID at `sid` (valid for the call).
    #[allow(unsafe_code)]
    fn copy_of(sid: PSID) -> Self {
        // SAFETY: `sid` points to a valid SID inside a token information buffer.
        let len = unsafe { GetLengthSid(sid) } as usize;
        // SAFETY: a valid SID is `len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(sid.cast::<u8>(), len) };
        OwnedSid::Copied(bytes.to_vec())
    }

    fn as_psid(&self) -> PSID {
        match self {
            OwnedSid::Local(p) => *p,
            OwnedSid::Copied(bytes) => bytes.as_ptr().cast_mut().cast(),
        }
    }
}

impl Drop for OwnedSid {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if let OwnedSid::Local(p) = self {
            // SAFETY: allocated by ConvertStringSidToSidW with LocalAlloc; freed once.
            unsafe { LocalFree(*p) };
        }
    }
}

/// Reads a variable-size token information class into a usize-aligned buffer.
#[allow(unsafe_code)]
fn token_information(token: HANDLE, class: i32) -> Result<Vec<usize>, PlatformError> {
    let mut needed = 0u32;
    // SAFETY: the documented size query (null buffer, zero length).
    unsafe { GetTokenInformation(token, class, ptr::null_mut(), 0, &mut needed) };
    let mut buffer = vec![
        0usize;
        (needed as usize)
            .div_ceil(std::mem::size_of::<usize>())
            .max(1)
    ];
    let bytes = (buffer.len() * std::mem::size_of::<usize>()) as u32;
    // SAFETY: `buffer` has `bytes` writable, pointer-aligned bytes.
    if unsafe { GetTokenInformation(token, class, buffer.as_mut_ptr().cast(), bytes, &mut needed) }
        == 0
    {
        return Err(PlatformError::last("GetTokenInformation"));
    }
    Ok(buffer)
}

/// The SIDs of `sids`, resolved against `token` for the per-token ones.
#[allow(unsafe_code)]
fn resolve(token: HANDLE, sids: &[Sid]) -> Result<Vec<OwnedSid>, PlatformError> {
    let mut out = Vec::with_capacity(sids.len());
    for sid in sids {
        if let Some(text) = sid.string_sid() {
            out.push(OwnedSid::from_string(text)?);
            continue;
        }
        match sid {
            Sid::TokenUser => {
                let buffer = token_information(token, TokenUser)?;
                // SAFETY: GetTokenInformation(TokenUser) filled a TOKEN_USER at the start.
                let user = unsafe { &*buffer.as_ptr().cast::<TOKEN_USER>() };
                out.push(OwnedSid::copy_of(user.User.Sid));
            }
            Sid::LogonSession => {
                let buffer = token_information(token, TokenGroups)?;
                // GetTokenInformation(TokenGroups) filled a TOKEN_GROUPS whose
                // `GroupCount` entries follow in the same buffer.
                // SAFETY: upheld as the lines above say.
                let groups = unsafe {
                    let header = &*buffer.as_ptr().cast::<TOKEN_GROUPS>();
                    std::slice::from_raw_parts(header.Groups.as_ptr(), header.GroupCount as usize)
                };
                for group in groups {
                    if group.Attributes & (SE_GROUP_LOGON_ID as u32) == SE_GROUP_LOGON_ID as u32 {
                        out.push(OwnedSid::copy_of(group.Sid));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The restricted primary token of `rules`, derived from this process's token.
#[allow(unsafe_code)]
fn restricted_token(rules: &TokenPolicy) -> Result<OwnedHandle, PlatformError> {
    let mut own: HANDLE = ptr::null_mut();
    // SAFETY: the pseudo-handle of this process; valid out pointer.
    if unsafe {
        OpenProcessToken(
            GetCurrentProcess(),
            TOKEN_DUPLICATE | TOKEN_QUERY | TOKEN_ASSIGN_PRIMARY | TOKEN_ADJUST_DEFAULT,
            &mut own,
        )
    } == 0
    {
        return Err(PlatformError::last("OpenProcessToken"));
    }
    // SAFETY: a token handle just opened for us.
    let own = unsafe { OwnedHandle::from_raw_handle(own) };
    let deny = resolve(own.as_raw_handle(), rules.deny_only)?;
    let restrict = resolve(own.as_raw_handle(), rules.restricting)?;
    let entries = |sids: &[OwnedSid]| -> Vec<SID_AND_ATTRIBUTES> {
        sids.iter()
            .map(|s| SID_AND_ATTRIBUTES {
                Sid: s.as_psid(),
                Attributes: 0,
            })
            .collect()
    };
    let deny_entries = entries(&deny);
    let restrict_entries = entries(&restrict);
    let flags = if rules.disable_max_privilege {
        DISABLE_MAX_PRIVILEGE
    } else {
        0
    };
    let mut restricted: HANDLE = ptr::null_mut();
    // SAFETY: the arrays and the SIDs they point to outlive the call; counts match.
    let ok = unsafe {
        CreateRestrictedToken(
            own.as_raw_handle(),
            flags,
            deny_entries.len() as u32,
            deny_entries.as_ptr(),
            0,
            ptr::null(),
            restrict_entries.len() as u32,
            restrict_entries.as_ptr(),
            &mut restricted,
        )
    };
    if ok == 0 {
        return Err(PlatformError::last("CreateRestrictedToken"));
    }
    // SAFETY: a token handle just created for us.
    let restricted = unsafe { OwnedHandle::from_raw_handle(restricted) };

    let label = OwnedSid::from_string(rules.integrity.string_sid())?;
    let mandatory = TOKEN_MANDATORY_LABEL {
        Label: SID_AND_ATTRIBUTES {
            Sid: label.as_psid(),
            Attributes: SE_GROUP_INTEGRITY as u32,
        },
    };
    // SAFETY: the label SID is valid for the call.
    let sid_len = unsafe { GetLengthSid(label.as_psid()) };
    let size = std::mem::size_of::<TOKEN_MANDATORY_LABEL>() as u32 + sid_len;
    // SAFETY: a token we own; the structure and its SID live across the call.
    if unsafe {
        SetTokenInformation(
            restricted.as_raw_handle(),
            TokenIntegrityLevel,
            (&raw const mandatory).cast(),
            size,
        )
    } == 0
    {
        return Err(PlatformError::last(
            "SetTokenInformation(TokenIntegrityLevel)",
        ));
    }
    Ok(restricted)
}

/// A job object with `rules`' limits.
#[allow(unsafe_code)]
fn job_object(rules: &JobPolicy) -> Result<OwnedHandle, PlatformError> {
    // SAFETY: default security, no name.
    let raw = unsafe { CreateJobObjectW(ptr::null(), ptr::null()) };
    if raw.is_null() {
        return Err(PlatformError::last("CreateJobObjectW"));
    }
    // SAFETY: a job handle just created for us.
    let job = unsafe { OwnedHandle::from_raw_handle(raw) };
    // SAFETY: plain data; all-zero means "no limit" for every other field.
    let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
    limits.BasicLimitInformation.LimitFlags = rules.limit_flags();
    limits.BasicLimitInformation.ActiveProcessLimit = rules.active_process_limit;
    // SAFETY: a job we own; the structure lives across the call and its size is given.
    if unsafe {
        SetInformationJobObject(
            job.as_raw_handle(),
            JobObjectExtendedLimitInformation,
            (&raw const limits).cast(),
            std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
        )
    } == 0
    {
        return Err(PlatformError::last("SetInformationJobObject(limits)"));
    }
    let ui = JOBOBJECT_BASIC_UI_RESTRICTIONS {
        UIRestrictionsClass: rules.ui_restrictions,
    };
    // SAFETY: as above.
    if unsafe {
        SetInformationJobObject(
            job.as_raw_handle(),
            JobObjectBasicUIRestrictions,
            (&raw const ui).cast(),
            std::mem::size_of::<JOBOBJECT_BASIC_UI_RESTRICTIONS>() as u32,
        )
    } == 0
    {
        return Err(PlatformError::last(
            "SetInformationJobObject(UI restrictions)",
        ));
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use windows_sys::Win32::System::JobObjects::{
        JOB_OBJECT_LIMIT_ACTIVE_PROCESS, JOB_OBJECT_LIMIT_BREAKAWAY_OK,
        JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    };
    use windows_sys::Win32::System::SystemServices::{
        JOB_OBJECT_UILIMIT_ALL, SECURITY_MANDATORY_HIGH_RID, SECURITY_MANDATORY_LOW_RID,
        SECURITY_MANDATORY_UNTRUSTED_RID,
    };
    use windows_sys::Win32::System::WindowsProgramming::PROCESS_CREATION_CHILD_PROCESS_RESTRICTED;

    use crate::windows_policy::{IntegrityLevel, limit, ui};

    #[test]
    fn policy_constants_match_the_windows_headers() {
        assert_eq!(limit::ACTIVE_PROCESS, JOB_OBJECT_LIMIT_ACTIVE_PROCESS);
        assert_eq!(limit::KILL_ON_JOB_CLOSE, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE);
        assert_eq!(
            limit::DIE_ON_UNHANDLED_EXCEPTION,
            JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION
        );
        assert_eq!(limit::BREAKAWAY_OK, JOB_OBJECT_LIMIT_BREAKAWAY_OK);
        assert_eq!(ui::ALL, JOB_OBJECT_UILIMIT_ALL);
        assert_eq!(
            CHILD_PROCESS_RESTRICTED,
            PROCESS_CREATION_CHILD_PROCESS_RESTRICTED
        );
        assert_eq!(
            IntegrityLevel::Untrusted.rid() as i32,
            SECURITY_MANDATORY_UNTRUSTED_RID
        );
        assert_eq!(IntegrityLevel::Low.rid() as i32, SECURITY_MANDATORY_LOW_RID);
        assert_eq!(
            IntegrityLevel::High.rid() as i32,
            SECURITY_MANDATORY_HIGH_RID
        );
    }

    #[test]
    fn every_policy_sid_string_is_accepted_by_windows() {
        for sid in [
            Sid::Null,
            Sid::Everyone,
            Sid::Interactive,
            Sid::AuthenticatedUsers,
            Sid::RestrictedCode,
            Sid::LocalSystem,
            Sid::Administrators,
            Sid::Users,
        ] {
            let text = sid.string_sid().unwrap();
            assert!(OwnedSid::from_string(text).is_ok(), "{text}");
        }
        assert!(OwnedSid::from_string("S-1-16-4096").is_ok());
        assert!(OwnedSid::from_string("not a sid").is_err());
    }

    #[test]
    fn quoting_round_trips_through_the_windows_parser() {
        // CommandLineToArgvW is the reference splitter; std's parser follows the same
        // rules, and `std::env::args` is what the worker reads.
        let cases = [
            "plain",
            "",
            "two words",
            r"C:\Program Files\wireguard-rs\",
            r#"say "hi""#,
            r"trailing\\",
            r#"back\"slash"#,
            "tab\there",
        ];
        for case in cases {
            let quoted = quote_arg(case);
            assert_eq!(split_one(&quoted), case, "{quoted}");
        }
    }

    /// The C runtime's splitting rules for one argument (Microsoft's "Parsing C
    /// command-line arguments"), written from the documentation.
    fn split_one(quoted: &str) -> String {
        let mut out = String::new();
        let mut in_quotes = false;
        let mut backslashes = 0usize;
        for ch in quoted.chars() {
            match ch {
                '\\' => backslashes += 1,
                '"' => {
                    out.extend(std::iter::repeat_n('\\', backslashes / 2));
                    if backslashes % 2 == 1 {
                        out.push('"');
                    } else {
                        in_quotes = !in_quotes;
                    }
                    backslashes = 0;
                }
                _ => {
                    out.extend(std::iter::repeat_n('\\', backslashes));
                    backslashes = 0;
                    assert!(
                        in_quotes || !ch.is_whitespace(),
                        "unquoted blank in {quoted}"
                    );
                    out.push(ch);
                }
            }
        }
        out.extend(std::iter::repeat_n('\\', backslashes));
        out
    }

    #[test]
    fn environment_block_is_sorted_and_double_terminated() {
        let block = environment_block(&[
            ("b".into(), "2".into()),
            ("A".into(), "1".into()),
            ("C".into(), "3".into()),
        ]);
        let text = String::from_utf16(&block).unwrap();
        assert_eq!(text, "A=1\0b=2\0C=3\0\0");
        assert_eq!(environment_block(&[]), vec![0, 0]);
    }
}
