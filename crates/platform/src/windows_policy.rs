//! The Windows sandbox of each worker, as data: its restricted token, its job object and
//! the handles it is given.
//!
//! Windows has no seccomp and no Capsicum. A worker is confined by what it *is* and what
//! it *holds*:
//! - a **restricted token** (`CreateRestrictedToken`): every privilege removed but
//!   `SeChangeNotifyPrivilege` (`DISABLE_MAX_PRIVILEGE`), its groups made deny-only (they
//!   can deny access, never grant it; above all Administrators), a list of restricting
//!   SIDs that every access check must also pass, and a low or untrusted integrity level,
//!   so it cannot write to (or, with no-read-up labels, read) anything at a higher level;
//! - a **job object**: one process at most (so no children), killed when the monitor's
//!   job handle closes (the monitor dies → the workers die), no error dialog (an
//!   unhandled exception ends the process), and no access to the desktop's shared state
//!   (clipboard, global atoms, other processes' window handles, system settings);
//! - the **handles it is given** explicitly (`PROC_THREAD_ATTRIBUTE_HANDLE_LIST`): nothing
//!   else is inherited, and the restricted token could not open anything of value itself.
//!
//! The monitor (an elevated service) starts keyd and datad itself: `CreateProcessAsUserW`
//! with a restricted version of the caller's own primary token needs no privilege, so,
//! unlike on Linux, no spawner process is needed and [`Role::Spawner`] has no policy here.
//!
//! Wintun's rings are registered with the driver by the process that starts a session
//! and cannot be handed to another process, so datad opens its own session: it starts
//! impersonating the monitor's token for that one step and then reverts to its
//! restricted primary token for good (the "lower the token after start-up" pattern of
//! Chromium's sandbox), before it reads any packet.
//!
//! Pure data and the handle list's text encoding; [`crate::windows`] applies it. Unit
//! tests check the security properties on every host.
#![forbid(unsafe_code)]

use crate::Role;

/// A security identifier a token policy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sid {
    /// `S-1-0-0`, the NULL SID: in a restricting list it matches no access control entry,
    /// so only objects granting access to no one in particular (none) can be opened.
    Null,
    /// `S-1-1-0`, Everyone.
    Everyone,
    /// `S-1-5-4`, Interactive (logged on at the console).
    Interactive,
    /// `S-1-5-11`, Authenticated Users.
    AuthenticatedUsers,
    /// `S-1-5-12`, Restricted Code: matches objects that grant access to restricted code.
    RestrictedCode,
    /// `S-1-5-18`, LocalSystem.
    LocalSystem,
    /// `S-1-5-32-544`, the built-in Administrators group.
    Administrators,
    /// `S-1-5-32-545`, the built-in Users group.
    Users,
    /// The token's own user SID (whatever account the monitor runs as).
    TokenUser,
    /// The token's logon-session SID (`S-1-5-5-X-Y`, different for every logon).
    LogonSession,
}

impl Sid {
    /// The SID's string form, or `None` for those known only from the token at run time.
    pub fn string_sid(self) -> Option<&'static str> {
        Some(match self {
            Sid::Null => "S-1-0-0",
            Sid::Everyone => "S-1-1-0",
            Sid::Interactive => "S-1-5-4",
            Sid::AuthenticatedUsers => "S-1-5-11",
            Sid::RestrictedCode => "S-1-5-12",
            Sid::LocalSystem => "S-1-5-18",
            Sid::Administrators => "S-1-5-32-544",
            Sid::Users => "S-1-5-32-545",
            Sid::TokenUser | Sid::LogonSession => return None,
        })
    }
}

/// A mandatory integrity level (the RID of its `S-1-16-RID` label SID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IntegrityLevel {
    /// `S-1-16-0`: cannot write to anything labelled, which is nearly everything.
    Untrusted,
    /// `S-1-16-4096`: what browsers' renderers and Protected Mode run at.
    Low,
    /// `S-1-16-8192`: an ordinary user's processes.
    Medium,
    /// `S-1-16-12288`: elevated administrators; the UAPI pipe's label.
    High,
    /// `S-1-16-16384`: services running as LocalSystem.
    System,
}

impl IntegrityLevel {
    /// The level's RID (`SECURITY_MANDATORY_*_RID`).
    pub fn rid(self) -> u32 {
        match self {
            IntegrityLevel::Untrusted => 0x0000,
            IntegrityLevel::Low => 0x1000,
            IntegrityLevel::Medium => 0x2000,
            IntegrityLevel::High => 0x3000,
            IntegrityLevel::System => 0x4000,
        }
    }

    /// The label SID's string form, for `ConvertStringSidToSidW`.
    pub fn string_sid(self) -> &'static str {
        match self {
            IntegrityLevel::Untrusted => "S-1-16-0",
            IntegrityLevel::Low => "S-1-16-4096",
            IntegrityLevel::Medium => "S-1-16-8192",
            IntegrityLevel::High => "S-1-16-12288",
            IntegrityLevel::System => "S-1-16-16384",
        }
    }
}

/// How a worker's primary token is derived from the monitor's (`CreateRestrictedToken`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    /// `DISABLE_MAX_PRIVILEGE`: every privilege but `SeChangeNotifyPrivilege` removed.
    pub disable_max_privilege: bool,
    /// Groups (and the user) made deny-only (`SidsToDisable`).
    pub deny_only: &'static [Sid],
    /// Restricting SIDs (`SidsToRestrict`): every access check must also pass for one
    /// of these. Never empty: an empty list would not restrict at all.
    pub restricting: &'static [Sid],
    /// The integrity level set on the token before the process starts.
    pub integrity: IntegrityLevel,
}

/// Bits of `JOBOBJECT_BASIC_LIMIT_INFORMATION.LimitFlags` (winnt.h).
pub mod limit {
    /// `JOB_OBJECT_LIMIT_ACTIVE_PROCESS`.
    pub const ACTIVE_PROCESS: u32 = 0x0000_0008;
    /// `JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION`.
    pub const DIE_ON_UNHANDLED_EXCEPTION: u32 = 0x0000_0400;
    /// `JOB_OBJECT_LIMIT_BREAKAWAY_OK`.
    pub const BREAKAWAY_OK: u32 = 0x0000_0800;
    /// `JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK`.
    pub const SILENT_BREAKAWAY_OK: u32 = 0x0000_1000;
    /// `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`.
    pub const KILL_ON_JOB_CLOSE: u32 = 0x0000_2000;
}

/// Bits of `JOBOBJECT_BASIC_UI_RESTRICTIONS.UIRestrictionsClass` (winnt.h).
pub mod ui {
    /// `JOB_OBJECT_UILIMIT_HANDLES`: no USER handles of processes outside the job.
    pub const HANDLES: u32 = 0x0000_0001;
    /// `JOB_OBJECT_UILIMIT_READCLIPBOARD`.
    pub const READ_CLIPBOARD: u32 = 0x0000_0002;
    /// `JOB_OBJECT_UILIMIT_WRITECLIPBOARD`.
    pub const WRITE_CLIPBOARD: u32 = 0x0000_0004;
    /// `JOB_OBJECT_UILIMIT_SYSTEMPARAMETERS`.
    pub const SYSTEM_PARAMETERS: u32 = 0x0000_0008;
    /// `JOB_OBJECT_UILIMIT_DISPLAYSETTINGS`.
    pub const DISPLAY_SETTINGS: u32 = 0x0000_0010;
    /// `JOB_OBJECT_UILIMIT_GLOBALATOMS`.
    pub const GLOBAL_ATOMS: u32 = 0x0000_0020;
    /// `JOB_OBJECT_UILIMIT_DESKTOP`.
    pub const DESKTOP: u32 = 0x0000_0040;
    /// `JOB_OBJECT_UILIMIT_EXITWINDOWS`.
    pub const EXIT_WINDOWS: u32 = 0x0000_0080;
    /// `JOB_OBJECT_UILIMIT_IME`: no input method editor.
    pub const IME: u32 = 0x0000_0100;
    /// Every restriction above.
    pub const ALL: u32 = HANDLES
        | READ_CLIPBOARD
        | WRITE_CLIPBOARD
        | SYSTEM_PARAMETERS
        | DISPLAY_SETTINGS
        | GLOBAL_ATOMS
        | DESKTOP
        | EXIT_WINDOWS
        | IME;
}

/// `PROCESS_CREATION_CHILD_PROCESS_RESTRICTED`, the value of
/// `PROC_THREAD_ATTRIBUTE_CHILD_PROCESS_POLICY` that forbids creating child processes.
pub const CHILD_PROCESS_RESTRICTED: u32 = 0x0000_0001;

/// The job object a worker is put in before its first instruction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPolicy {
    /// Processes the job may hold at once (`JOB_OBJECT_LIMIT_ACTIVE_PROCESS`).
    pub active_process_limit: u32,
    /// The job's processes die when its last handle (the monitor's) closes.
    pub kill_on_job_close: bool,
    /// An unhandled exception ends the process (no Windows Error Reporting dialog).
    pub die_on_unhandled_exception: bool,
    /// Whether a child may leave the job (never, for a worker).
    pub breakaway_ok: bool,
    /// The `JOB_OBJECT_UILIMIT_*` bits.
    pub ui_restrictions: u32,
    /// The process-creation attribute `PROCESS_CREATION_CHILD_PROCESS_RESTRICTED`: no
    /// child process, even one outside the job's count.
    pub no_child_processes: bool,
}

impl JobPolicy {
    /// The `LimitFlags` word of `JOBOBJECT_BASIC_LIMIT_INFORMATION`.
    pub fn limit_flags(&self) -> u32 {
        let mut flags = 0;
        if self.active_process_limit > 0 {
            flags |= limit::ACTIVE_PROCESS;
        }
        if self.kill_on_job_close {
            flags |= limit::KILL_ON_JOB_CLOSE;
        }
        if self.die_on_unhandled_exception {
            flags |= limit::DIE_ON_UNHANDLED_EXCEPTION;
        }
        if self.breakaway_ok {
            flags |= limit::BREAKAWAY_OK;
        }
        flags
    }
}

/// The job every worker runs in.
pub const WORKER_JOB: JobPolicy = JobPolicy {
    active_process_limit: 1,
    kill_on_job_close: true,
    die_on_unhandled_exception: true,
    breakaway_ok: false,
    ui_restrictions: ui::ALL,
    no_child_processes: true,
};

/// A handle a worker receives from the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandleKind {
    /// Its IPC pipe to the monitor.
    IpcMonitor,
    /// keyd's end of the keyd↔datad pipe.
    IpcKeydToDatad,
    /// datad's end of the keyd↔datad pipe.
    IpcDatadToKeyd,
    /// An accepted UAPI pipe instance (a connected `wg.exe`), passed later, one by one.
    UapiConnection,
    /// A bound UDP socket (IPv4 or IPv6).
    UdpSocket,
}

impl HandleKind {
    /// True for Winsock sockets (the network).
    pub fn is_socket(self) -> bool {
        matches!(self, HandleKind::UdpSocket)
    }

    /// Its name in the handle list (see [`encode_handle_list`]).
    pub fn name(self) -> &'static str {
        match self {
            HandleKind::IpcMonitor => "ipc-monitor",
            HandleKind::IpcKeydToDatad => "ipc-datad",
            HandleKind::IpcDatadToKeyd => "ipc-keyd",
            HandleKind::UapiConnection => "uapi",
            HandleKind::UdpSocket => "udp",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [
            HandleKind::IpcMonitor,
            HandleKind::IpcKeydToDatad,
            HandleKind::IpcDatadToKeyd,
            HandleKind::UapiConnection,
            HandleKind::UdpSocket,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// How a handle reaches the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// Inherited at creation, listed in `PROC_THREAD_ATTRIBUTE_HANDLE_LIST`; its value is
    /// in the worker's handle list.
    Inherit,
    /// Duplicated into the running worker (`DuplicateHandle`) and announced over IPC.
    DuplicateLater,
    /// A socket: `WSADuplicateSocketW` for the worker's process id, the resulting
    /// `WSAPROTOCOL_INFOW` sent over IPC (the documented way to share a socket).
    WsaDuplicate,
}

/// One handle a role is given, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandleGrant {
    /// What it is.
    pub kind: HandleKind,
    /// How it gets there.
    pub transfer: Transfer,
}

/// A worker's whole Windows sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePolicy {
    /// Its primary token.
    pub token: TokenPolicy,
    /// Its job object.
    pub job: JobPolicy,
    /// The handles it receives; nothing else is inheritable into it.
    pub handles: &'static [HandleGrant],
    /// Whether it starts impersonating the monitor's token to open its Wintun session and
    /// then reverts to the restricted token (datad only; see the module doc).
    pub opens_wintun_before_lowering: bool,
}

/// Every group a token may carry that could grant access, made deny-only.
const ALL_GROUPS: &[Sid] = &[
    Sid::TokenUser,
    Sid::Administrators,
    Sid::Users,
    Sid::AuthenticatedUsers,
    Sid::Interactive,
    Sid::Everyone,
    Sid::LocalSystem,
    Sid::LogonSession,
];

const KEYD_HANDLES: &[HandleGrant] = &[
    HandleGrant {
        kind: HandleKind::IpcMonitor,
        transfer: Transfer::Inherit,
    },
    HandleGrant {
        kind: HandleKind::IpcKeydToDatad,
        transfer: Transfer::Inherit,
    },
    HandleGrant {
        kind: HandleKind::UapiConnection,
        transfer: Transfer::DuplicateLater,
    },
];

const DATAD_HANDLES: &[HandleGrant] = &[
    HandleGrant {
        kind: HandleKind::IpcMonitor,
        transfer: Transfer::Inherit,
    },
    HandleGrant {
        kind: HandleKind::IpcDatadToKeyd,
        transfer: Transfer::Inherit,
    },
    HandleGrant {
        kind: HandleKind::UdpSocket,
        transfer: Transfer::WsaDuplicate,
    },
];

/// keyd: the static key. Untrusted integrity, every group deny-only, the NULL SID as
/// its only restricting SID (it can open nothing by name), no network.
const KEYD: RolePolicy = RolePolicy {
    token: TokenPolicy {
        disable_max_privilege: true,
        deny_only: ALL_GROUPS,
        restricting: &[Sid::Null],
        integrity: IntegrityLevel::Untrusted,
    },
    job: WORKER_JOB,
    handles: KEYD_HANDLES,
    opens_wintun_before_lowering: false,
};

/// datad: session keys and the packets. Low integrity (Winsock's provider DLLs and
/// Wintun's need a little more than untrusted), every group deny-only, restricted to
/// Restricted Code and Everyone (what system DLLs and Winsock's objects grant).
const DATAD: RolePolicy = RolePolicy {
    token: TokenPolicy {
        disable_max_privilege: true,
        deny_only: ALL_GROUPS,
        restricting: &[Sid::RestrictedCode, Sid::Everyone],
        integrity: IntegrityLevel::Low,
    },
    job: WORKER_JOB,
    handles: DATAD_HANDLES,
    opens_wintun_before_lowering: true,
};

/// The Windows sandbox of `role`, or `None` where Windows does not run that role (the
/// spawner: see the module doc).
pub fn policy(role: Role) -> Option<&'static RolePolicy> {
    match role {
        Role::Keyd => Some(&KEYD),
        Role::Datad => Some(&DATAD),
        Role::Spawner => None,
    }
}

/// The environment variable that carries a worker's inherited handles.
pub const HANDLES_ENV: &str = "WG_RS_HANDLES";

/// Why a handle list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleListError {
    /// An entry is not `name=value`.
    #[error(
        "handle list entry {0:?} is not name=value; start workers from the monitor, never by hand"
    )]
    Malformed(String),
    /// An entry names no known handle.
    #[error(
        "handle list names an unknown handle {0:?}; the monitor and worker binaries differ in version, reinstall both"
    )]
    UnknownKind(String),
    /// A value is not a decimal number, or is zero or `INVALID_HANDLE_VALUE`'s pattern.
    #[error("handle list value {0:?} is not a valid handle number")]
    BadValue(String),
    /// The same kind appears twice (each inherited kind is given once, which also bounds
    /// the list's length).
    #[error("handle list names {0} twice")]
    Duplicate(&'static str),
}

/// Encodes inherited handles as `name=value,name=value` (values in decimal; handle
/// values are process-independent numbers once inherited).
pub fn encode_handle_list(handles: &[(HandleKind, u64)]) -> String {
    handles
        .iter()
        .map(|(k, v)| format!("{}={v}", k.name()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Decodes [`encode_handle_list`]'s text, refusing anything else.
pub fn decode_handle_list(text: &str) -> Result<Vec<(HandleKind, u64)>, HandleListError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<(HandleKind, u64)> = Vec::new();
    for entry in text.split(',') {
        let (name, value) = entry
            .split_once('=')
            .ok_or_else(|| HandleListError::Malformed(entry.to_owned()))?;
        let kind = HandleKind::from_name(name)
            .ok_or_else(|| HandleListError::UnknownKind(name.to_owned()))?;
        let valid_digits = !value.is_empty()
            && value.len() <= 20
            && value.bytes().all(|b| b.is_ascii_digit())
            && !(value.len() > 1 && value.starts_with('0'));
        let number = valid_digits
            .then(|| value.parse::<u64>().ok())
            .flatten()
            // 0 is no handle; all ones is INVALID_HANDLE_VALUE.
            .filter(|&n| n != 0 && n != u64::MAX)
            .ok_or_else(|| HandleListError::BadValue(value.to_owned()))?;
        if out.iter().any(|(k, _)| *k == kind) {
            return Err(HandleListError::Duplicate(kind.name()));
        }
        out.push((kind, number));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn workers() -> [(Role, &'static RolePolicy); 2] {
        [
            (Role::Keyd, policy(Role::Keyd).unwrap()),
            (Role::Datad, policy(Role::Datad).unwrap()),
        ]
    }

    #[test]
    fn no_role_keeps_administrators_or_privileges() {
        for (role, p) in workers() {
            assert!(p.token.disable_max_privilege, "{role:?}");
            assert!(p.token.deny_only.contains(&Sid::Administrators), "{role:?}");
            assert!(
                !p.token.restricting.contains(&Sid::Administrators),
                "{role:?}"
            );
            assert!(!p.token.restricting.contains(&Sid::LocalSystem), "{role:?}");
            assert!(!p.token.restricting.contains(&Sid::TokenUser), "{role:?}");
        }
    }

    #[test]
    fn every_group_that_could_grant_access_is_deny_only() {
        for (role, p) in workers() {
            for sid in [
                Sid::TokenUser,
                Sid::Users,
                Sid::AuthenticatedUsers,
                Sid::Interactive,
                Sid::LogonSession,
                Sid::LocalSystem,
            ] {
                assert!(p.token.deny_only.contains(&sid), "{role:?} keeps {sid:?}");
            }
        }
    }

    #[test]
    fn tokens_are_restricted_and_below_medium() {
        for (role, p) in workers() {
            assert!(!p.token.restricting.is_empty(), "{role:?}");
            assert!(p.token.integrity <= IntegrityLevel::Low, "{role:?}");
        }
        // keyd holds the static key: the lowest level and nothing it could open by name.
        let keyd = policy(Role::Keyd).unwrap();
        assert_eq!(keyd.token.integrity, IntegrityLevel::Untrusted);
        assert_eq!(keyd.token.restricting, &[Sid::Null]);
    }

    #[test]
    fn workers_cannot_start_processes_or_outlive_the_monitor() {
        for (role, p) in workers() {
            let job = p.job;
            assert_eq!(job.active_process_limit, 1, "{role:?}");
            assert!(job.no_child_processes, "{role:?}");
            assert!(job.kill_on_job_close, "{role:?}");
            assert!(job.die_on_unhandled_exception, "{role:?}");
            assert!(!job.breakaway_ok, "{role:?}");
            let flags = job.limit_flags();
            assert_eq!(flags & limit::BREAKAWAY_OK, 0);
            assert_eq!(flags & limit::SILENT_BREAKAWAY_OK, 0);
            assert_ne!(flags & limit::ACTIVE_PROCESS, 0);
            assert_ne!(flags & limit::KILL_ON_JOB_CLOSE, 0);
            assert_ne!(flags & limit::DIE_ON_UNHANDLED_EXCEPTION, 0);
            assert_eq!(job.ui_restrictions, ui::ALL);
        }
    }

    #[test]
    fn winnt_h_values() {
        // The values of winnt.h (Microsoft's documentation of these structures).
        assert_eq!(limit::ACTIVE_PROCESS, 8);
        assert_eq!(limit::KILL_ON_JOB_CLOSE, 0x2000);
        assert_eq!(limit::DIE_ON_UNHANDLED_EXCEPTION, 0x400);
        assert_eq!(ui::ALL, 0x1ff);
        assert_eq!(IntegrityLevel::Low.rid(), 4096);
        for level in [
            IntegrityLevel::Untrusted,
            IntegrityLevel::Low,
            IntegrityLevel::Medium,
            IntegrityLevel::High,
            IntegrityLevel::System,
        ] {
            assert_eq!(level.string_sid(), format!("S-1-16-{}", level.rid()));
        }
    }

    #[test]
    fn keyd_gets_no_network_and_datad_no_uapi() {
        let keyd = policy(Role::Keyd).unwrap();
        assert!(keyd.handles.iter().all(|h| !h.kind.is_socket()));
        assert!(
            keyd.handles
                .iter()
                .all(|h| h.transfer != Transfer::WsaDuplicate)
        );
        assert!(!keyd.opens_wintun_before_lowering);
        // UAPI carries private keys: only keyd serves it.
        let datad = policy(Role::Datad).unwrap();
        assert!(
            datad
                .handles
                .iter()
                .all(|h| h.kind != HandleKind::UapiConnection)
        );
        assert!(
            datad
                .handles
                .iter()
                .any(|h| h.kind == HandleKind::UdpSocket)
        );
        // Each side holds only its own end of the keyd↔datad pipe.
        assert!(
            keyd.handles
                .iter()
                .all(|h| h.kind != HandleKind::IpcDatadToKeyd)
        );
        assert!(
            datad
                .handles
                .iter()
                .all(|h| h.kind != HandleKind::IpcKeydToDatad)
        );
        assert!(policy(Role::Spawner).is_none());
    }

    #[test]
    fn sockets_always_travel_by_wsa_duplicate() {
        for (_, p) in workers() {
            for h in p.handles {
                assert_eq!(
                    h.kind.is_socket(),
                    h.transfer == Transfer::WsaDuplicate,
                    "{h:?}"
                );
            }
        }
    }

    #[test]
    fn well_known_sids_have_their_documented_strings() {
        assert_eq!(Sid::Administrators.string_sid(), Some("S-1-5-32-544"));
        assert_eq!(Sid::Everyone.string_sid(), Some("S-1-1-0"));
        assert_eq!(Sid::Null.string_sid(), Some("S-1-0-0"));
        assert_eq!(Sid::LogonSession.string_sid(), None);
    }

    #[test]
    fn handle_list_refuses_what_the_monitor_never_writes() {
        use HandleListError as E;
        assert_eq!(decode_handle_list(""), Ok(Vec::new()));
        assert!(matches!(
            decode_handle_list("ipc-monitor"),
            Err(E::Malformed(_))
        ));
        assert!(matches!(
            decode_handle_list("tun=5"),
            Err(E::UnknownKind(_))
        ));
        for bad in [
            "",
            "0",
            "-1",
            "+4",
            "04",
            "0x10",
            "18446744073709551615",
            "99999999999999999999999",
        ] {
            assert!(
                matches!(
                    decode_handle_list(&format!("udp={bad}")),
                    Err(E::BadValue(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(decode_handle_list("udp=4,udp=8"), Err(E::Duplicate("udp")));
    }

    fn kind() -> impl Strategy<Value = HandleKind> {
        prop_oneof![
            Just(HandleKind::IpcMonitor),
            Just(HandleKind::IpcKeydToDatad),
            Just(HandleKind::IpcDatadToKeyd),
            Just(HandleKind::UapiConnection),
            Just(HandleKind::UdpSocket),
        ]
    }

    proptest! {
        #[test]
        fn handle_list_round_trips(
            map in proptest::collection::hash_map(kind(), 1u64..u64::MAX, 0..5)
        ) {
            let list: Vec<(HandleKind, u64)> = map.into_iter().collect();
            prop_assert_eq!(decode_handle_list(&encode_handle_list(&list)), Ok(list));
        }

        #[test]
        fn any_text_decodes_or_is_refused_without_panic(text in "\\PC{0,80}") {
            if let Ok(list) = decode_handle_list(&text) {
                prop_assert!(list.len() <= 5);
                prop_assert_eq!(encode_handle_list(&list), text);
            }
        }
    }
}
