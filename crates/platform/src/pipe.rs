//! The UAPI endpoint on Windows: the named pipe `wg.exe` opens, and who may open it.
//!
//! `wg.exe` (wireguard-tools' Windows build) and wireguard-go talk UAPI over the pipe
//! `\\.\pipe\ProtectedPrefix\Administrators\WireGuard\<IFNAME>`. The `ProtectedPrefix`
//! namespace only lets members of the named group (here Administrators) create pipes in
//! it, so an unprivileged process cannot squat the name before the daemon starts.
//!
//! wireguard-go protects each pipe instance with a security descriptor that this module
//! states as an SDDL string ([`UAPI_PIPE_SDDL`]): owned by SYSTEM; a protected DACL (no
//! inherited entries) that grants full access to SYSTEM and to Administrators and to no
//! one else; and a mandatory label at high integrity that forbids write-up, read-up and
//! execute-up, so a medium-integrity process of an administrator (not elevated) cannot
//! open it either.
//!
//! Interface names follow the rules WireGuard for Windows applies to tunnel names (the
//! name becomes part of a pipe path, a service name and an adapter name): 1 to 32
//! characters from `a-z A-Z 0-9 _ = + . -`, not starting or ending with a dot, and not a
//! DOS device name (`CON`, `NUL`, `COM1`, …, also before a dot: `nul.txt`).
//!
//! Pure logic, unit-tested on every host; [`crate::windows`] uses it on Windows.
#![forbid(unsafe_code)]

/// The directory of the WireGuard UAPI pipes, with its trailing backslash.
pub const UAPI_PIPE_PREFIX: &str = r"\\.\pipe\ProtectedPrefix\Administrators\WireGuard\";

/// The longest interface name accepted (characters; all of them are ASCII).
pub const MAX_INTERFACE_NAME_LEN: usize = 32;

/// The security descriptor of every UAPI pipe instance, in SDDL (the string format of
/// `ConvertStringSecurityDescriptorToSecurityDescriptorW`):
/// - `O:SY` owner LocalSystem;
/// - `D:P` a protected DACL with `(A;;GA;;;SY)` and `(A;;GA;;;BA)`: allow `GENERIC_ALL` to
///   LocalSystem and to the built-in Administrators, nothing to anyone else;
/// - `S:(ML;;NWNRNX;;;HI)` a mandatory label, high integrity, no write-up, no read-up, no
///   execute-up.
pub const UAPI_PIPE_SDDL: &str = "O:SYD:P(A;;GA;;;SY)(A;;GA;;;BA)S:(ML;;NWNRNX;;;HI)";

/// How the UAPI pipe is created, beyond its security descriptor (wireguard-go's choices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeCreateRules {
    /// Byte stream, not messages: UAPI is a text protocol read line by line.
    pub byte_mode: bool,
    /// Refuse clients on other machines (`PIPE_REJECT_REMOTE_CLIENTS`).
    pub reject_remote_clients: bool,
    /// The first instance must be new (`FILE_FLAG_FIRST_PIPE_INSTANCE`): if the name
    /// exists already, another process owns it and the daemon must not share it.
    pub first_instance_exclusive: bool,
    /// Unlimited instances (`PIPE_UNLIMITED_INSTANCES`): one per waiting or connected
    /// client, as a Unix listener accepts many.
    pub unlimited_instances: bool,
}

/// The rules every UAPI pipe instance is created with.
pub const UAPI_PIPE_RULES: PipeCreateRules = PipeCreateRules {
    byte_mode: true,
    reject_remote_clients: true,
    first_instance_exclusive: true,
    unlimited_instances: true,
};

/// Why an interface name cannot name a UAPI pipe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipeNameError {
    /// The name is empty.
    #[error("the interface name is empty: give a name such as wg0")]
    Empty,
    /// The name is longer than [`MAX_INTERFACE_NAME_LEN`].
    #[error(
        "the interface name is {len} characters long; at most {MAX_INTERFACE_NAME_LEN} are allowed"
    )]
    TooLong {
        /// Its length in characters.
        len: usize,
    },
    /// The name holds a character outside `a-z A-Z 0-9 _ = + . -`.
    #[error(
        "the interface name has the character {ch:?} at position {position}; use only letters, digits and _ = + . -"
    )]
    ForbiddenCharacter {
        /// The character.
        ch: char,
        /// Its position, counted in characters from 0.
        position: usize,
    },
    /// The name starts or ends with a dot, which Windows strips from file names.
    #[error("the interface name starts or ends with a dot; remove it")]
    EdgeDot,
    /// The name is a DOS device name (possibly followed by a dot and more).
    #[error("the interface name {name:?} is a reserved Windows device name; choose another")]
    Reserved {
        /// The name as given.
        name: String,
    },
}

/// The DOS device names Windows reserves in every directory.
const RESERVED_DEVICE_NAMES: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

fn is_allowed_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '_' | '=' | '+' | '.' | '-')
}

/// Checks that `name` may name a WireGuard interface on Windows (see the module doc).
pub fn validate_interface_name(name: &str) -> Result<(), PipeNameError> {
    if name.is_empty() {
        return Err(PipeNameError::Empty);
    }
    if let Some((position, ch)) = name.chars().enumerate().find(|(_, c)| !is_allowed_char(*c)) {
        return Err(PipeNameError::ForbiddenCharacter { ch, position });
    }
    // Only ASCII is left, so bytes are characters.
    if name.len() > MAX_INTERFACE_NAME_LEN {
        return Err(PipeNameError::TooLong { len: name.len() });
    }
    if name.starts_with('.') || name.ends_with('.') {
        return Err(PipeNameError::EdgeDot);
    }
    // Windows resolves `NUL.anything` to the device too.
    let stem = name.split('.').next().unwrap_or(name);
    if RESERVED_DEVICE_NAMES
        .iter()
        .any(|reserved| stem.eq_ignore_ascii_case(reserved))
    {
        return Err(PipeNameError::Reserved {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// The UAPI pipe path of interface `name`, after [`validate_interface_name`].
pub fn uapi_pipe_path(name: &str) -> Result<String, PipeNameError> {
    validate_interface_name(name)?;
    Ok(format!("{UAPI_PIPE_PREFIX}{name}"))
}

/// [`uapi_pipe_path`] as a NUL-terminated UTF-16 string, as the `W` Win32 functions take it.
pub fn uapi_pipe_path_wide(name: &str) -> Result<Vec<u16>, PipeNameError> {
    Ok(to_wide(&uapi_pipe_path(name)?))
}

/// `s` as a NUL-terminated UTF-16 string.
pub fn to_wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_path_is_the_one_wg_exe_opens() {
        assert_eq!(
            uapi_pipe_path("wg0").as_deref(),
            Ok(r"\\.\pipe\ProtectedPrefix\Administrators\WireGuard\wg0")
        );
    }

    #[test]
    fn wide_path_is_utf16_with_one_nul_at_the_end() {
        let wide = uapi_pipe_path_wide("wg0").unwrap_or_default();
        assert_eq!(wide.last(), Some(&0));
        assert_eq!(wide.iter().filter(|&&u| u == 0).count(), 1);
        let back = String::from_utf16(&wide[..wide.len() - 1]).unwrap_or_default();
        assert_eq!(
            back,
            r"\\.\pipe\ProtectedPrefix\Administrators\WireGuard\wg0"
        );
    }

    #[test]
    fn ordinary_names_pass() {
        for name in [
            "wg0",
            "a",
            "office-vpn",
            "home_1",
            "x=y+z",
            "v1.2",
            &"a".repeat(32),
        ] {
            assert_eq!(validate_interface_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        assert_eq!(validate_interface_name(""), Err(PipeNameError::Empty));
        assert_eq!(
            validate_interface_name(&"a".repeat(33)),
            Err(PipeNameError::TooLong { len: 33 })
        );
        assert_eq!(
            validate_interface_name(r"wg\..\x"),
            Err(PipeNameError::ForbiddenCharacter {
                ch: '\\',
                position: 2
            })
        );
        assert_eq!(validate_interface_name(".wg"), Err(PipeNameError::EdgeDot));
        assert_eq!(validate_interface_name("wg."), Err(PipeNameError::EdgeDot));
        for reserved in ["NUL", "nul", "Com1", "lpt9", "con.conf", "aux.x.y"] {
            assert!(
                matches!(
                    validate_interface_name(reserved),
                    Err(PipeNameError::Reserved { .. })
                ),
                "{reserved}"
            );
        }
        // Device names only match whole: these are ordinary names.
        for fine in ["console", "nul0", "com10", "lpt0", "xcon"] {
            assert_eq!(validate_interface_name(fine), Ok(()), "{fine}");
        }
    }

    #[test]
    fn characters_that_change_a_path_are_refused() {
        // Path separators, the NT namespace markers, wildcards, the service-name `$`,
        // control characters, spaces and non-ASCII (no look-alike of a backslash).
        for ch in [
            '\\', '/', ':', '*', '?', '"', '<', '>', '|', '$', ' ', '\t', '\0', '\u{7f}', 'é',
            '\u{FF3C}',
        ] {
            let name = format!("wg{ch}0");
            assert!(
                matches!(
                    validate_interface_name(&name),
                    Err(PipeNameError::ForbiddenCharacter { position: 2, .. })
                ),
                "{name:?}"
            );
        }
    }

    /// An SDDL string split into its sections, for the property checks below (the
    /// grammar of Microsoft's "Security Descriptor String Format").
    struct Sddl<'a> {
        owner: Option<&'a str>,
        dacl: Option<&'a str>,
        sacl: Option<&'a str>,
    }

    fn split_sddl(s: &str) -> Sddl<'_> {
        let mut out = Sddl {
            owner: None,
            dacl: None,
            sacl: None,
        };
        let mut rest = s;
        while rest.len() >= 2 {
            let tag = &rest[..2];
            let body = &rest[2..];
            // The next section starts at the next `X:` outside parentheses.
            let mut depth = 0u32;
            let mut end = body.len();
            for (i, c) in body.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth = depth.saturating_sub(1),
                    ':' if depth == 0 && i >= 1 => {
                        end = i - 1;
                        break;
                    }
                    _ => {}
                }
            }
            match tag {
                "O:" => out.owner = Some(&body[..end]),
                "D:" => out.dacl = Some(&body[..end]),
                "S:" => out.sacl = Some(&body[..end]),
                _ => {}
            }
            rest = &body[end..];
        }
        out
    }

    fn aces(acl: &str) -> Vec<Vec<&str>> {
        acl.split('(')
            .skip(1)
            .map(|a| a.trim_end_matches(')').split(';').collect())
            .collect()
    }

    #[test]
    fn the_descriptor_is_wireguard_gos() {
        // The string in wireguard-go's ipc/uapi_windows.go, so wg.exe meets the same rules.
        assert_eq!(
            UAPI_PIPE_SDDL,
            "O:SYD:P(A;;GA;;;SY)(A;;GA;;;BA)S:(ML;;NWNRNX;;;HI)"
        );
    }

    #[test]
    fn only_system_and_administrators_get_in() {
        let sd = split_sddl(UAPI_PIPE_SDDL);
        assert_eq!(sd.owner, Some("SY"));
        let dacl = sd.dacl.unwrap_or_default();
        // Protected: nothing inherited from the pipe file system's defaults.
        assert!(dacl.starts_with('P'), "{dacl}");
        let entries = aces(dacl);
        assert_eq!(entries.len(), 2);
        let mut trustees: Vec<&str> = Vec::new();
        for ace in &entries {
            assert_eq!(ace.len(), 6, "{ace:?}");
            assert_eq!(ace[0], "A", "only allow entries: {ace:?}");
            assert_eq!(ace[2], "GA", "{ace:?}");
            trustees.push(ace[5]);
        }
        trustees.sort_unstable();
        assert_eq!(trustees, ["BA", "SY"]);
        // No broad trustee anywhere in the string: Everyone, Users, Authenticated Users,
        // Interactive, Anonymous, Network, Creator Owner.
        for broad in [";WD)", ";BU)", ";AU)", ";IU)", ";AN)", ";NU)", ";CO)"] {
            assert!(!UAPI_PIPE_SDDL.contains(broad), "{broad}");
        }
    }

    #[test]
    fn the_label_is_high_integrity_and_blocks_all_three_ups() {
        let sd = split_sddl(UAPI_PIPE_SDDL);
        let entries = aces(sd.sacl.unwrap_or_default());
        assert_eq!(entries.len(), 1);
        let label = &entries[0];
        assert_eq!(label[0], "ML");
        assert_eq!(label[5], "HI");
        let rights = label[2];
        for policy in ["NW", "NR", "NX"] {
            assert!(rights.contains(policy), "{rights} lacks {policy}");
        }
    }

    #[test]
    fn rules_match_wireguard_go() {
        // wireguard-go's listener: byte mode, remote clients rejected, the first instance
        // created exclusively, as many instances as clients.
        assert_eq!(
            UAPI_PIPE_RULES,
            PipeCreateRules {
                byte_mode: true,
                reject_remote_clients: true,
                first_instance_exclusive: true,
                unlimited_instances: true,
            }
        );
    }

    proptest! {
        #[test]
        fn accepted_names_make_paths_with_no_separator_after_the_prefix(name in "\\PC{0,40}") {
            if let Ok(path) = uapi_pipe_path(&name) {
                let tail = &path[UAPI_PIPE_PREFIX.len()..];
                prop_assert_eq!(tail, name.as_str());
                prop_assert!(!tail.contains(['\\', '/', ':']));
                prop_assert!((1..=MAX_INTERFACE_NAME_LEN).contains(&tail.len()));
            }
        }

        #[test]
        fn names_from_the_allowed_alphabet_pass_unless_reserved_or_dotted(
            name in "[a-zA-Z0-9_=+.-]{1,32}"
        ) {
            let verdict = validate_interface_name(&name);
            let dotted = name.starts_with('.') || name.ends_with('.');
            let stem = name.split('.').next().unwrap_or("").to_ascii_uppercase();
            let reserved = RESERVED_DEVICE_NAMES.contains(&stem.as_str());
            prop_assert_eq!(verdict.is_ok(), !dotted && !reserved);
        }
    }
}
