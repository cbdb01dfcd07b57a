//! The account a root fuselock leaves uid 0 for.

use std::{collections::HashSet, io};

use anyhow::{Context as _, Result};
use log::warn;

/// The account a root fuselock switches to: the `.deb` creates it.
pub const USER: &str = "fuselock";

/// Where a uid of its own is looked for when there is no `fuselock` user:
/// the range systemd's `UIDS-GIDS.md` leaves unused (from 1879048192),
/// below 2^31, which some tools read as negative.
const SPARE_IDS: std::ops::Range<u32> = 1_879_048_192..1_879_048_192 + 65_536;

/// The account a root fuselock becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
    /// Where it came from, for the log line.
    pub source: String,
}

/// `name`'s uid and gid in a password file's text.
fn user_in_passwd(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let (_password, uid, gid) = (f.next()?, f.next()?, f.next()?);
        Some((uid.parse().ok()?, gid.parse().ok()?))
    })
}

/// The numeric ids in field `field` (0-based) of a password or group file.
fn ids_in(text: &str, field: usize) -> HashSet<u32> {
    text.lines()
        .filter_map(|l| l.split(':').nth(field)?.parse().ok())
        .collect()
}

/// The uids and gids (real, effective, saved, filesystem) of every process
/// that can be seen.
fn ids_of_processes() -> (HashSet<u32>, HashSet<u32>) {
    let (mut uids, mut gids) = (HashSet::new(), HashSet::new());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (uids, gids);
    };
    for entry in dir.flatten() {
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        for (field, set) in [("Uid:", &mut uids), ("Gid:", &mut gids)] {
            if let Some(line) = status.lines().find_map(|l| l.strip_prefix(field)) {
                set.extend(
                    line.split_whitespace()
                        .filter_map(|v| v.parse::<u32>().ok()),
                );
            }
        }
    }
    (uids, gids)
}

/// The account to leave root for: `fuselock` where the password file has
/// it (not as uid or gid 0), else the first id of [`SPARE_IDS`] that no
/// account, group or process uses. Never the shared `nobody`: any process
/// running as nobody could then stop or kill fuselock.
pub(super) fn choose_account(
    passwd: &str,
    group: &str,
    taken_by_processes: &(HashSet<u32>, HashSet<u32>),
) -> Result<Account> {
    match user_in_passwd(passwd, USER) {
        Some((uid, gid)) if uid != 0 && gid != 0 => {
            return Ok(Account {
                uid,
                gid,
                source: format!("the {USER} user"),
            })
        }
        Some(_) => warn!("the {USER} user in /etc/passwd has uid or gid 0: not using it"),
        None => {}
    }
    let (uids, gids) = (ids_in(passwd, 2), ids_in(group, 2));
    let (proc_uids, proc_gids) = taken_by_processes;
    let id = SPARE_IDS
        .clone()
        .find(|id| {
            !uids.contains(id)
                && !gids.contains(id)
                && !proc_uids.contains(id)
                && !proc_gids.contains(id)
        })
        .with_context(|| {
            format!(
                "no {USER} user in /etc/passwd, and every id from {} to {} is in use: \
                 create the {USER} system user",
                SPARE_IDS.start,
                SPARE_IDS.end - 1
            )
        })?;
    Ok(Account {
        uid: id,
        gid: id,
        source: format!("no {USER} user in /etc/passwd: an id no account or process uses"),
    })
}

/// [`choose_account`] on this host.
pub fn drop_account() -> Result<Account> {
    let read = |path: &str| match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {path}")),
    };
    choose_account(
        &read("/etc/passwd")?,
        &read("/etc/group")?,
        &ids_of_processes(),
    )
}
