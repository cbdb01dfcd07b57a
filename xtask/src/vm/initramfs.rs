//! The guest's initramfs: busybox, fuselock and the files a command needs,
//! with an init that runs the command and reports its status.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Result};

use crate::{cache, cpio::Cpio};

use super::*;

/// Single-quotes `s` for sh.
pub(super) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub(super) fn init_script(spec: &VmSpec) -> String {
    // A serial console has no size; take the host terminal's so full-screen
    // programs (fuselock top) fit it.
    let size = match (spec.interactive, terminal_size()) {
        (true, Some((cols, rows))) => format!("stty rows {rows} cols {cols} 2>/dev/null\n"),
        _ => String::new(),
    };
    let mount = match spec.mount {
        None => String::new(),
        Some(kind) => format!(
            r#"mkdir -p /backing /mnt/fuse
mount -t tmpfs backing /backing
fuselock testfs --backing /backing --mountpoint /mnt/fuse {flags} >/tmp/testfs.log 2>&1 &
for i in $(seq 1 100); do grep -q ' /mnt/fuse ' /proc/mounts && break; sleep 0.1; done
grep -q ' /mnt/fuse ' /proc/mounts || {{ echo "vm: testfs did not mount:"; cat /tmp/testfs.log; }}
echo "vm: /mnt/fuse mounted ({kind:?})"
"#,
            flags = kind.testfs_flags()
        ),
    };
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmp /tmp
mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=xterm
{size}
echo "vm: kernel $(uname -r), $(nproc) CPUs, preemption $(cat /sys/kernel/debug/sched/preempt 2>/dev/null || echo unknown)"
{mount}cd /tmp
/bin/sh /run.sh
echo "{EXIT_MARKER}$?"
poweroff -f
"#
    )
}

pub(super) fn initramfs(spec: &VmSpec) -> Result<PathBuf> {
    let busybox = PathBuf::from("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox missing: run `cargo xtask setup` (installs busybox-static)");
    }
    let mut c = Cpio::new(Vec::new());
    for dir in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "mnt", "root",
        "etc", "run",
    ] {
        c.dir(dir)?;
    }
    c.char_dev("dev/console", 5, 1)?;
    c.char_dev("dev/null", 1, 3)?;
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    c.file("bin/busybox", 0o755, &read(&busybox)?)?;
    c.symlink("bin/sh", "busybox")?;
    c.file("init", 0o755, init_script(spec).as_bytes())?;
    let command: Vec<String> = spec.command.iter().map(|a| sh_quote(a)).collect();
    c.file(
        "run.sh",
        0o755,
        format!("exec {}\n", command.join(" ")).as_bytes(),
    )?;
    let mut dirs_made = std::collections::BTreeSet::new();
    for (host, guest) in &spec.files {
        let guest = guest.trim_start_matches('/');
        if let Some((parent, _)) = guest.rsplit_once('/') {
            let mut acc = String::new();
            for part in parent.split('/') {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(part);
                if dirs_made.insert(acc.clone())
                    && !["bin", "usr", "usr/bin", "tmp", "root", "etc"].contains(&acc.as_str())
                {
                    c.dir(&acc)?;
                }
            }
        }
        c.file(guest, 0o755, &read(host)?)?;
    }
    let bytes = c.finish()?;
    let path = cache::workspace_root().join("target/vm/initramfs.cpio");
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// tmux with its libraries, the C.UTF-8 character map (without which it
/// refuses to start: "need UTF-8 locale") and the terminfo entries of the
/// console's TERM (xterm) and of its panes (screen).
pub fn tmux_files() -> Result<Vec<(PathBuf, String)>> {
    let mut files = with_libraries("/usr/bin/tmux")?;
    for data in [
        "/usr/lib/locale/C.utf8/LC_CTYPE",
        "/lib/terminfo/x/xterm",
        "/lib/terminfo/s/screen",
    ] {
        if !Path::new(data).is_file() {
            bail!("{data} missing (from Debian's libc-bin and ncurses-base): tmux needs it");
        }
        files.push((PathBuf::from(data), data.to_owned()));
    }
    Ok(files)
}

/// A dynamically linked host binary with its libraries and loader, at the
/// same paths in the guest.
pub fn with_libraries(binary: &str) -> Result<Vec<(PathBuf, String)>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!("ldd {binary} failed");
    }
    let mut files = vec![(PathBuf::from(binary), binary.to_owned())];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push((PathBuf::from(p), p.to_owned()));
        }
    }
    Ok(files)
}
