//! What `/proc` says: the kernel's release, and processes: who is alive, and
//! in which PID namespace. Files and events fuselock leaves on shared resources (scratch
//! files on a mount, kprobe events in tracefs) are named by namespace and
//! pid, and judged stale through these.

use std::path::Path;

/// The initial PID namespace's inode (`PROC_PID_INIT_INO`): from there
/// every process on the host is visible.
pub const INIT_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// The PID namespace inode of `/proc/<pid>` (`pid` may be `self`).
pub fn pid_namespace_of(pid: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
    // "pid:[4026531836]"
    link.to_str()?
        .strip_prefix("pid:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// This process's PID namespace; the initial one on a kernel without PID
/// namespaces.
pub fn my_pid_namespace() -> u64 {
    pid_namespace_of("self").unwrap_or(INIT_PID_NAMESPACE)
}

/// Whether a process `pid` of our own namespace exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
