//! Shared by the VM tests and the VM benchmark: the `fuselock` binary and
//! a FUSE mount (`fuselock testfs`, or another server) that cleans up after
//! itself.
#![allow(dead_code)] // each user takes what it needs

pub mod tmux;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

pub fn fuselock() -> String {
    std::env::var("FUSELOCK_BIN").unwrap_or_else(|_| "fuselock".into())
}

/// A FUSE server's mount of a fresh backing directory, both under one
/// directory of /tmp: `fuselock testfs` ([`TestFs::mount`]) or another
/// server ([`TestFs::start`]). Dropping it stops the server, unmounts and
/// removes the directory.
pub struct TestFs {
    server: Child,
    pub mountpoint: PathBuf,
    pub backing: PathBuf,
    base: PathBuf,
}

static MOUNTS: AtomicU32 = AtomicU32::new(0);

pub fn is_mounted(mountpoint: &Path) -> bool {
    let needle = format!(" {} ", mountpoint.display());
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| m.contains(&needle))
}

impl TestFs {
    /// `fuselock testfs FLAGS`.
    pub fn mount(flags: &[&str]) -> TestFs {
        TestFs::start(&format!("testfs {flags:?}"), |backing, mountpoint| {
            Command::new(fuselock())
                .arg("testfs")
                .arg("--backing")
                .arg(backing)
                .arg("--mountpoint")
                .arg(mountpoint)
                .args(flags)
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn fuselock testfs")
        })
    }

    /// The server `spawn(backing, mountpoint)` starts, once it has mounted
    /// (the directories are named `fuselock-e2e-*`, which the tests' checks
    /// expect of a mount).
    pub fn start(server_name: &str, spawn: impl FnOnce(&Path, &Path) -> Child) -> TestFs {
        let n = MOUNTS.fetch_add(1, Ordering::Relaxed);
        let base = PathBuf::from(format!("/tmp/fuselock-e2e-{}-{n}", std::process::id()));
        let backing = base.join("backing");
        let mountpoint = base.join("mnt");
        std::fs::create_dir_all(&backing).expect("backing dir");
        std::fs::create_dir_all(&mountpoint).expect("mountpoint");
        let mut server = spawn(&backing, &mountpoint);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&mountpoint) {
            if let Ok(Some(status)) = server.try_wait() {
                panic!("{server_name} exited before mounting: {status}");
            }
            assert!(Instant::now() < deadline, "{server_name} did not mount");
            thread::sleep(Duration::from_millis(50));
        }
        TestFs {
            server,
            mountpoint,
            backing,
            base,
        }
    }

    /// SIGKILLs the server mid-whatever: the kernel aborts the connection
    /// and the mount stays until this is dropped.
    pub fn kill_server(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }

    /// Sends `signal` to the server (SIGSTOP: requests wait unanswered).
    pub fn signal_server(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.server.id() as i32, signal) };
    }

    /// Stops the server and waits until every one of its threads has
    /// stopped: kill(2) returns before they do, and a thread not yet
    /// stopped can still answer a request.
    pub fn stop_server(&self) {
        self.signal_server(libc::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.server.id());
        let stopped = || -> bool {
            let Ok(dir) = std::fs::read_dir(&tasks) else {
                return false;
            };
            dir.filter_map(Result::ok).all(|task| {
                std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                    // The state follows the command name's closing parenthesis.
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        .is_some_and(|state| state == "T" || state == "t")
                })
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stopped() {
            assert!(Instant::now() < deadline, "the test server did not stop");
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn path(&self, name: &str) -> String {
        self.mountpoint.join(name).display().to_string()
    }
}

impl Drop for TestFs {
    fn drop(&mut self) {
        // Both servers unmount on SIGTERM and exit.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGTERM) };
        let _ = self.server.wait();
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Pids of the processes running `fuselock SUBCOMMAND`.
pub fn running(subcommand: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_string_lossy().parse().ok()?;
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let ours = args.len() > 1
                && args[0].ends_with(b"fuselock")
                && args[1] == subcommand.as_bytes();
            ours.then_some(pid)
        })
        .collect()
}

/// The kernel's run-time accounting of BPF programs, on while it lives.
pub struct BpfStats;

impl BpfStats {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> BpfStats {
        std::fs::write(Self::SYSCTL, "1").expect("enable bpf_stats");
        BpfStats
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::SYSCTL, "0");
    }
}

/// The numeric fields of each of process `pid`'s fds (`/proc/PID/fdinfo`):
/// what the kernel says of its BPF programs and maps.
fn fdinfos(pid: u32) -> Vec<std::collections::HashMap<String, u64>> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .map(|info| {
            info.lines()
                .filter_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    Some((name.to_owned(), value.trim().parse().ok()?))
                })
                .collect()
        })
        .collect()
}

/// The run count and run time (ns) of each BPF program process `pid` holds,
/// by program name (as the kernel keeps it, 15 bytes at most); they move
/// only while bpf_stats is on.
pub fn prog_stats_each(pid: u32) -> Vec<(String, u64, u64)> {
    let mut programs = std::collections::BTreeMap::new();
    for fields in fdinfos(pid) {
        // Link fds name their program too, but carry no run counts; and a
        // program held by two fds is one program.
        if let (Some(id), Some(runs)) = (fields.get("prog_id"), fields.get("run_cnt")) {
            let ns = fields.get("run_time_ns").copied().unwrap_or(0);
            programs.insert(*id, (*runs, ns));
        }
    }
    let mut names = std::collections::HashMap::new();
    for info in aya::programs::loaded_programs().flatten() {
        names.insert(
            u64::from(info.id()),
            info.name_as_str().unwrap_or("?").to_owned(),
        );
    }
    programs
        .into_iter()
        .map(|(id, (runs, ns))| {
            let name = names.remove(&id).unwrap_or_else(|| format!("prog {id}"));
            (name, runs, ns)
        })
        .collect()
}

/// The kernel memory charged to the BPF maps process `pid` holds (the sum
/// of their `memlock`, each map once), and how many maps.
pub fn map_memlock(pid: u32) -> (u64, usize) {
    let maps: std::collections::HashMap<u64, u64> = fdinfos(pid)
        .iter()
        .filter_map(|f| Some((*f.get("map_id")?, *f.get("memlock")?)))
        .collect();
    (maps.values().sum(), maps.len())
}

/// The run count and run time (ns) of all BPF programs process `pid` holds.
pub fn prog_stats(pid: u32) -> (u64, u64) {
    prog_stats_each(pid)
        .iter()
        .fold((0, 0), |(runs, ns), (_, r, n)| (runs + r, ns + n))
}

/// Create/rename/unlink on tmpfs from `threads` threads in one directory
/// (whose inode lock they fight over), plus mmap/munmap churn (mmap_lock):
/// lock-heavy, and nothing to do with FUSE. The wall time of the whole.
pub fn churn(threads: u64, iterations: u64) -> Duration {
    let dir = std::path::Path::new("/tmp/churn");
    std::fs::create_dir_all(dir).expect("churn dir");
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..iterations {
                    let a = dir.join(format!("a{t}-{i}"));
                    let b = dir.join(format!("b{t}-{i}"));
                    std::fs::write(&a, b"x").expect("create");
                    std::fs::rename(&a, &b).expect("rename");
                    std::fs::remove_file(&b).expect("unlink");
                    // SAFETY: an anonymous private mapping we touch and
                    // unmap ourselves.
                    unsafe {
                        let len = 64 * 1024;
                        let p = libc::mmap(
                            std::ptr::null_mut(),
                            len,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                            -1,
                            0,
                        );
                        assert_ne!(p, libc::MAP_FAILED);
                        for page in (0..len).step_by(4096) {
                            *(p as *mut u8).add(page) = 1;
                        }
                        libc::munmap(p, len);
                    }
                }
            });
        }
    });
    start.elapsed()
}
