//! Device number to mount point, from `/proc/self/mountinfo`.

use std::{collections::HashMap, fs::File, os::fd::AsRawFd as _};

use probes_common::Dev;

/// Device → mount point of the first mount of that device.
#[derive(Debug, Default, Clone)]
pub struct MountTable {
    by_dev: HashMap<Dev, String>,
}

impl MountTable {
    /// Reads the current mount table; an unreadable one gives an empty table
    /// (names are a convenience, never a reason to stop counting).
    pub fn read() -> MountTable {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|s| MountTable::parse(&s))
            .unwrap_or_default()
    }

    pub fn parse(mountinfo: &str) -> MountTable {
        let mut by_dev = HashMap::new();
        for line in mountinfo.lines() {
            // id parent MAJ:MIN root mountpoint options ...
            let mut fields = line.split(' ');
            let (Some(_), Some(_), Some(dev), Some(_), Some(mountpoint)) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                continue;
            };
            let Some(dev) = Dev::parse(dev) else {
                continue;
            };
            by_dev.entry(dev).or_insert_with(|| unescape(mountpoint));
        }
        MountTable { by_dev }
    }

    pub fn mount_of(&self, dev: Dev) -> Option<&str> {
        self.by_dev.get(&dev).map(String::as_str)
    }

    pub fn has(&self, dev: Dev) -> bool {
        self.by_dev.contains_key(&dev)
    }
}

/// Says when the mount table may have changed, so that it is read again only
/// then (a host with hundreds of container mounts would otherwise parse them
/// every refresh). The kernel flags an open mountinfo file with `POLLPRI`
/// after each mount or unmount in its namespace (proc(5)); where the file
/// cannot be opened, every call says "changed".
pub struct MountWatch {
    file: Option<File>,
}

impl MountWatch {
    /// Watches from now: open it before reading the table it guards.
    pub fn new() -> MountWatch {
        MountWatch {
            file: File::open("/proc/self/mountinfo").ok(),
        }
    }

    /// Whether a mount or unmount happened since the last call (or since
    /// [`MountWatch::new`]). Polling clears the flag.
    pub fn changed(&mut self) -> bool {
        let Some(file) = &self.file else {
            return true;
        };
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one pollfd we own, no wait.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n < 0 || pfd.revents & (libc::POLLPRI | libc::POLLERR) != 0
    }
}

impl Default for MountWatch {
    fn default() -> MountWatch {
        MountWatch::new()
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
40 22 0:45 / /mnt/fuse rw,nosuid,nodev - fuse.fuselock-testfs fuselock-testfs rw
41 22 0:46 / /mnt/with\\040space rw - fuse x rw
42 22 0:45 / /mnt/bind rw - fuse.fuselock-testfs fuselock-testfs rw
";

    #[test]
    fn maps_devices_to_first_mount_point() {
        let t = MountTable::parse(SAMPLE);
        assert_eq!(t.mount_of(Dev(45)), Some("/mnt/fuse"));
        assert_eq!(t.mount_of(Dev(46)), Some("/mnt/with space"));
        assert_eq!(t.mount_of(Dev((9 << 20) | 9)), None);
    }

    #[test]
    fn watch_sees_a_mount_and_an_unmount() {
        let dir = std::env::temp_dir().join(format!("fuselock-mountwatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let target = std::ffi::CString::new(dir.to_string_lossy().as_bytes()).expect("path");
        let mut watch = MountWatch::new();
        assert!(!watch.changed(), "nothing mounted since the watch began");
        // SAFETY: NUL-terminated strings we own.
        let mounted = unsafe {
            libc::mount(
                c"none".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if mounted != 0 {
            eprintln!(
                "skipped: cannot mount a tmpfs here ({})",
                std::io::Error::last_os_error()
            );
            let _ = std::fs::remove_dir(&dir);
            return;
        }
        assert!(watch.changed(), "a mount");
        assert!(!watch.changed(), "polling cleared the flag");
        // SAFETY: as above.
        assert_eq!(unsafe { libc::umount(target.as_ptr()) }, 0);
        assert!(watch.changed(), "an unmount");
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn tolerates_garbage() {
        let t = MountTable::parse("x\n\n1 2\n\\\n1 2 x:y / /mnt\n");
        assert!(t.by_dev.is_empty());
    }
}
