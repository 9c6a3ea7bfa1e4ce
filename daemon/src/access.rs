//! Who may do what: roles from the peer's credentials (SO_PEERCRED).
//!
//! Three roles, each including the one before: `read` (queries, ping),
//! `write` (execute, batch, writing queries), `admin` (every `ctl`
//! command). Rules name users and groups; a peer gets the highest role any
//! rule grants it. Without rules in the config: root and the daemon's own
//! uid are admin, members of the socket file's group may read and write,
//! and everyone else is refused. The daemon's own uid is always admin, so
//! a config cannot lock its operator out.

use std::ffi::{CStr, CString};

use anyhow::{Context, bail};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// A user or group a rule names, resolved to an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Principal {
    Uid(u32),
    Gid(u32),
}

/// The `[access]` table of the config file. Each entry is `user:NAME`,
/// `group:NAME`, `uid:N`, `gid:N`, or a bare user name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessConfig {
    pub admin: Option<Vec<String>>,
    pub write: Option<Vec<String>>,
    pub read: Option<Vec<String>>,
}

/// Rules in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccessRules {
    pub admin: Vec<Principal>,
    pub write: Vec<Principal>,
    pub read: Vec<Principal>,
}

impl AccessRules {
    /// Resolves the config's names; a name that does not resolve is an
    /// error naming it (a typo must not silently lock someone out or in).
    pub(crate) fn resolve(config: &AccessConfig, socket_gid: u32) -> anyhow::Result<AccessRules> {
        let own_uid = current_uid();
        let list = |key: &str, given: &Option<Vec<String>>, default: Vec<Principal>| match given {
            None => Ok(default),
            Some(names) => names
                .iter()
                .map(|n| parse_principal(n).with_context(|| format!("in [access] {key}")))
                .collect::<anyhow::Result<Vec<_>>>(),
        };
        let mut admin = list("admin", &config.admin, vec![Principal::Uid(0)])?;
        if !admin.contains(&Principal::Uid(own_uid)) {
            admin.push(Principal::Uid(own_uid));
        }
        Ok(AccessRules {
            admin,
            write: list("write", &config.write, vec![Principal::Gid(socket_gid)])?,
            read: list("read", &config.read, Vec::new())?,
        })
    }

    /// The highest role the rules grant this peer, if any.
    pub(crate) fn role_of(&self, peer: &Peer) -> Option<Role> {
        let matches = |rules: &[Principal]| {
            rules.iter().any(|p| match p {
                Principal::Uid(u) => *u == peer.uid,
                Principal::Gid(g) => peer.groups.contains(g),
            })
        };
        if matches(&self.admin) {
            Some(Role::Admin)
        } else if matches(&self.write) {
            Some(Role::Write)
        } else if matches(&self.read) {
            Some(Role::Read)
        } else {
            None
        }
    }

    /// One line per role, for logs and `ctl status`.
    pub(crate) fn describe(&self) -> String {
        let show = |v: &[Principal]| {
            if v.is_empty() {
                return "nobody".to_owned();
            }
            v.iter()
                .map(|p| match p {
                    Principal::Uid(u) => format!("uid:{u}"),
                    Principal::Gid(g) => format!("gid:{g}"),
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "admin={} write={} read={}",
            show(&self.admin),
            show(&self.write),
            show(&self.read)
        )
    }
}

fn parse_principal(s: &str) -> anyhow::Result<Principal> {
    let (kind, name) = s.split_once(':').unwrap_or(("user", s));
    let number = |n: &str| {
        n.parse::<u32>()
            .with_context(|| format!("{s:?}: {n:?} is not a number"))
    };
    match kind {
        "uid" => Ok(Principal::Uid(number(name)?)),
        "gid" => Ok(Principal::Gid(number(name)?)),
        "user" => user_uid(name).map(Principal::Uid).with_context(|| {
            format!("{s:?}: no user {name:?} on this host; use uid:N or create the user")
        }),
        "group" => group_gid(name).map(Principal::Gid).with_context(|| {
            format!("{s:?}: no group {name:?} on this host; use gid:N or create the group")
        }),
        _ => bail!("{s:?} is not user:NAME, group:NAME, uid:N, gid:N or a user name"),
    }
}

/// A connected process, from SO_PEERCRED plus its uid's groups.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub pid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    /// The peer's primary gid and its user's supplementary groups.
    pub groups: Vec<u32>,
}

impl Peer {
    pub(crate) fn new(pid: Option<u32>, uid: u32, gid: u32) -> Peer {
        let mut groups = vec![gid];
        for g in supplementary_groups(uid) {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        Peer {
            pid,
            uid,
            gid,
            groups,
        }
    }
}

pub(crate) fn current_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// Buffer size for the getpw*/getgr* families.
const NSS_BUF: usize = 16 * 1024;

fn user_uid(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut pwd: libc::passwd = unsafe_zeroed();
    let mut buf = vec![0 as libc::c_char; NSS_BUF];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid pointers to locals and a buffer of the given length.
    let r =
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out) };
    (r == 0 && !out.is_null()).then_some(pwd.pw_uid)
}

pub(crate) fn group_gid(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut grp: libc::group = unsafe_zeroed();
    let mut buf = vec![0 as libc::c_char; NSS_BUF];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: valid pointers to locals and a buffer of the given length.
    let r =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    (r == 0 && !out.is_null()).then_some(grp.gr_gid)
}

/// The groups the user with this uid belongs to, per the host's user
/// database; empty when the uid has no entry.
fn supplementary_groups(uid: u32) -> Vec<u32> {
    let mut pwd: libc::passwd = unsafe_zeroed();
    let mut buf = vec![0 as libc::c_char; NSS_BUF];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid pointers to locals and a buffer of the given length.
    let r = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return Vec::new();
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated by getpwuid_r.
    let name: &CStr = unsafe { CStr::from_ptr(pwd.pw_name) };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: `groups` holds `count` entries; getgrouplist writes at
        // most that many and reports the number needed.
        let r = unsafe {
            libc::getgrouplist(name.as_ptr(), pwd.pw_gid, groups.as_mut_ptr(), &mut count)
        };
        if r >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        if count <= n || count > 65_536 {
            return Vec::new();
        }
        n = count;
    }
}

fn unsafe_zeroed<T>() -> T {
    // SAFETY: only used for libc's plain C structs (passwd, group), for
    // which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, groups: &[u32]) -> Peer {
        Peer {
            pid: None,
            uid,
            gid: groups.first().copied().unwrap_or(uid),
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn defaults_give_root_and_self_admin_the_socket_group_write_and_others_nothing() {
        let rules = AccessRules::resolve(&AccessConfig::default(), 4242).expect("resolve");
        assert_eq!(rules.role_of(&peer(0, &[0])), Some(Role::Admin));
        assert_eq!(
            rules.role_of(&peer(current_uid(), &[12345])),
            Some(Role::Admin)
        );
        assert_eq!(rules.role_of(&peer(54321, &[4242])), Some(Role::Write));
        assert_eq!(rules.role_of(&peer(54321, &[1, 2])), None);
    }

    #[test]
    fn configured_rules_replace_the_defaults_and_bad_names_are_errors() {
        let config = AccessConfig {
            admin: Some(vec!["uid:7000".into()]),
            write: Some(vec!["gid:7100".into()]),
            read: Some(vec!["uid:7200".into(), "gid:7300".into()]),
        };
        let rules = AccessRules::resolve(&config, 4242).expect("resolve");
        assert_eq!(rules.role_of(&peer(7000, &[1])), Some(Role::Admin));
        assert_eq!(rules.role_of(&peer(9, &[7100])), Some(Role::Write));
        assert_eq!(rules.role_of(&peer(7200, &[1])), Some(Role::Read));
        assert_eq!(rules.role_of(&peer(9, &[7300])), Some(Role::Read));
        // The socket group's default is replaced, root's too.
        assert_eq!(rules.role_of(&peer(9, &[4242])), None);
        assert_eq!(
            rules.role_of(&peer(0, &[0])),
            None.or(
                // ...unless the daemon itself runs as root.
                (current_uid() == 0).then_some(Role::Admin)
            )
        );

        let bad = AccessConfig {
            write: Some(vec!["group:no-such-group-nexusd".into()]),
            ..AccessConfig::default()
        };
        let err = format!(
            "{:#}",
            AccessRules::resolve(&bad, 1).expect_err("an unknown group is an error")
        );
        assert!(err.contains("no group \"no-such-group-nexusd\""), "{err}");
        let err = format!(
            "{:#}",
            AccessRules::resolve(
                &AccessConfig {
                    read: Some(vec!["uid:abc".into()]),
                    ..AccessConfig::default()
                },
                1
            )
            .expect_err("a bad uid is an error")
        );
        assert!(err.contains("\"abc\" is not a number"), "{err}");
        assert_eq!(user_uid("root"), Some(0));
        assert_eq!(group_gid("root"), Some(0));
    }
}
