//! Faults around fuselock: the FUSE server killed mid-workload, the file
//! system unmounted while watched and a new mount reusing its device and
//! inode numbers. fuselock keeps running and every count stays exact.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{fuselock, TestFs};

/// `fuselock stat --json` running in the background, its stream decoded as
/// a consumer would: whole lines replace the entries, delta lines update
/// and remove them.
struct Stream {
    child: Child,
    state: Arc<Mutex<(Value, HashMap<String, Value>)>>,
}

fn key_of(e: &Value) -> String {
    format!("{}/{}/{}", e["dev"], e["ino"], e["path"])
}

impl Stream {
    fn start() -> Stream {
        Stream::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Stream {
        let mut child = Command::new(fuselock())
            .args(["stat", "--json", "--interval", "0.5"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("fuselock stat");
        let stdout = child.stdout.take().expect("stdout");
        let state = Arc::new(Mutex::new((Value::Null, HashMap::new())));
        let shared = state.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).expect("a JSON line");
                let mut st = shared.lock().expect("lock");
                if v["delta"] != true {
                    st.1.clear();
                }
                for k in v["removed"].as_array().into_iter().flatten() {
                    st.1.remove(&key_of(k));
                }
                for e in v["entries"].as_array().into_iter().flatten() {
                    st.1.insert(key_of(e), e.clone());
                }
                st.0 = v;
            }
        });
        let s = Stream { child, state };
        s.wait_until("fuselock to attach", |last, _| !last.is_null());
        s
    }

    /// Waits until `ok(last line, entries)` holds.
    fn wait_until(&self, what: &str, ok: impl Fn(&Value, &HashMap<String, Value>) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            {
                let st = self.state.lock().expect("lock");
                if ok(&st.0, &st.1) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The entry named `name` on the mount at `mountpoint`.
    fn entry(&self, mountpoint: &str, name: &str) -> Option<Value> {
        let st = self.state.lock().expect("lock");
        st.1.values()
            .find(|e| e["name"] == name && e["mount"] == mountpoint)
            .cloned()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGINT, then the final (whole) snapshot.
    fn finish(mut self) -> (Value, HashMap<String, Value>) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "fuselock stat: {status}");
        std::thread::sleep(Duration::from_millis(300)); // the reader's last line
        let st = self.state.lock().expect("lock");
        assert_eq!(st.0["final"], true, "the last line is the final snapshot");
        (st.0.clone(), st.1.clone())
    }
}

fn load_json(fs: &TestFs, file: &str, writes: u64, threads: u32) -> Child {
    Command::new(fuselock())
        .args(["load", &fs.path(file), "--kind", "overwrite", "--json"])
        .args(["--writes", &writes.to_string()])
        .args(["--threads", &threads.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("fuselock load")
}

fn report(load: Child) -> Value {
    let out = load.wait_with_output().expect("load");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("load report: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn server_killed_mid_workload_counts_exactly_what_happened() {
    for flags in [&["--parallel"][..], &["--parallel", "--direct-io"]] {
        let mut stream = Stream::start();
        let mut fs = TestFs::mount(flags);
        let load = load_json(&fs, "victim", 6000, 2);
        std::thread::sleep(Duration::from_millis(1500));
        fs.kill_server();
        let r = report(load);
        assert!(stream.alive(), "{flags:?}: fuselock died with the server");

        // fuselock goes on counting a fresh mount exactly.
        let fs2 = TestFs::mount(flags);
        let after = report(load_json(&fs2, "after", 37, 1));
        assert_eq!(after["errors"], 0, "{after}");
        let mnt2 = fs2.mountpoint.display().to_string();
        stream.wait_until("37 writes on the fresh mount", |_, entries| {
            has(entries, &mnt2, "after", 37)
        });
        let victim_mnt = fs.mountpoint.display().to_string();
        let (last, _) = {
            let v = stream.entry(&victim_mnt, "victim").expect("victim entry");
            let a = stream.entry(&mnt2, "after").expect("after entry");
            let done = stream.finish();
            // Every write call the workload made reached fuse_file_write_iter
            // and is counted once; failures as errors, bytes as written.
            assert_eq!(v["writes"], r["writes"], "{flags:?}: {v}\n{r}");
            let failed =
                r["errors"].as_u64().expect("errors") - r["short_writes"].as_u64().expect("short");
            assert_eq!(v["errors"], failed, "{flags:?}: {v}\n{r}");
            assert_eq!(v["bytes"], r["bytes"], "{flags:?}: {v}\n{r}");
            // A write counts under exactly one of shared, exclusive, unlocked:
            // one the server's death cut short before the lock is not an
            // acquisition.
            let modes = ["shared", "exclusive", "unlocked"]
                .iter()
                .map(|m| v[*m].as_u64().expect("count"))
                .sum::<u64>();
            assert_eq!(Some(modes), v["writes"].as_u64(), "{flags:?}: {v}");
            assert_eq!(a["writes"], 37);
            assert_eq!(a["errors"], 0);
            println!(
                "{flags:?}: server killed after {} of {} writes; errors {failed}; shared {} exclusive {} unlocked {}",
                r["writes"].as_u64().unwrap_or(0) - failed,
                r["writes"],
                v["shared"],
                v["exclusive"],
                v["unlocked"]
            );
            done
        };
        let h = &last["health"];
        for k in ["inflight_full", "inflight_replaced", "exit_unmatched"] {
            assert_eq!(h[k], 0, "{flags:?}: health {k}: {h}");
        }
        drop(fs2);
        drop(fs);
    }
}

#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn a_remount_reusing_device_and_inode_numbers_starts_fresh() {
    let stream = Stream::start();
    let fs1 = TestFs::mount(&[]);
    let mnt1 = fs1.mountpoint.display().to_string();
    assert_eq!(report(load_json(&fs1, "data", 37, 1))["errors"], 0);
    stream.wait_until("37 writes on the first mount", |_, entries| {
        has(entries, &mnt1, "data", 37)
    });
    let first = stream.entry(&mnt1, "data").expect("entry");
    // Unmounted while fuselock watches: it notices within a refresh.
    drop(fs1);
    stream.wait_until("the unmounted file's entry to go", |_, entries| {
        !entries.values().any(|e| e["mount"] == mnt1.as_str())
    });

    let fs2 = TestFs::mount(&[]);
    let mnt2 = fs2.mountpoint.display().to_string();
    assert_eq!(report(load_json(&fs2, "data", 23, 1))["errors"], 0);
    stream.wait_until("23 writes on the second mount", |_, entries| {
        has(entries, &mnt2, "data", 23)
    });
    let second = stream.entry(&mnt2, "data").expect("entry");
    let reused = first["dev"] == second["dev"] && first["ino"] == second["ino"];
    println!(
        "first {}:{} second {}:{}: device and inode reused: {reused}",
        first["dev"], first["ino"], second["dev"], second["ino"]
    );
    let (last, entries) = stream.finish();
    // The new file counts its own 23, never 37 + 23; the totals count both.
    let data: Vec<&Value> = entries.values().filter(|e| e["name"] == "data").collect();
    assert_eq!(data.len(), 1, "{data:?}");
    assert_eq!(data[0]["writes"], 23, "{}", data[0]);
    assert_eq!(last["totals"]["passthrough"]["writes"], 60);
    // Entries fuselock dropped itself are not evictions.
    assert_eq!(last["health"]["evictions"], 0, "{}", last["health"]);
    drop(fs2);
}

/// Whether `entries` has `name` on `mountpoint` with `writes` writes.
fn has(entries: &HashMap<String, Value>, mountpoint: &str, name: &str, writes: u64) -> bool {
    entries
        .values()
        .any(|e| e["name"] == name && e["mount"] == mountpoint && e["writes"] == writes)
}

#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn many_writers_inside_the_write_at_once_miss_no_return() {
    // 32 threads queue on one file's exclusive lock: more tasks inside
    // fuse_file_write_iter than a kretprobe's default maxactive (10 on 2
    // CPUs), which would miss returns and leave their records behind.
    for mode in ["kprobe", "fentry"] {
        let stream = Stream::start_with(&["--probe-mode", mode]);
        let fs = TestFs::mount(&[]);
        let r = report(load_json(&fs, "crowded", 3200, 32));
        assert_eq!(r["errors"], 0, "{r}");
        let (last, _) = stream.finish();
        let h = &last["health"];
        let n = |v: &Value| v.as_u64().expect("a count");
        let counted = n(&last["totals"]["passthrough"]["writes"]);
        let replaced = n(&h["inflight_replaced"]);
        println!(
            "{mode}: 3200 writes: {counted} counted, {replaced} records replaced by the same \
             thread's next write; inflight_full {}",
            h["inflight_full"]
        );
        // Every write that got a record is counted or replaced: none is
        // lost without a trace.
        assert_eq!(h["inflight_full"], 0, "{h}");
        assert_eq!(counted + replaced, 3200, "{mode}: {h}");
        // fexit has no maxactive, and fuselock's kretprobes have room for
        // 4096 tasks inside the function at once (the kernel's default
        // would be 10 here): nothing is missed.
        assert_eq!((counted, replaced), (3200, 0), "{mode}: {h}");
        drop(fs);
        // The return probes' tracefs events went with fuselock.
        let events =
            std::fs::read_to_string("/sys/kernel/tracing/kprobe_events").unwrap_or_default();
        assert!(!events.contains("fuselock/"), "left behind:\n{events}");
    }
}

/// A write held for seconds by a stopped server is counted once, when it
/// returns: its record waits in its task's storage, with no age limit to
/// drop it and no shared map for it to fill.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn a_write_stuck_on_a_stopped_server_counts_once_it_returns() {
    use std::{fs::OpenOptions, io::Write as _};
    for mode in ["kprobe", "fentry"] {
        let stream = Stream::start_with(&["--probe-mode", mode]);
        // direct-io: a write waits for the server's answer.
        let fs = TestFs::mount(&["--direct-io"]);
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(fs.path("stuck"))
                .expect("open")
        };
        open().write_all(b"x").expect("write");
        stream.wait_until("the first write counted", |last, _| {
            last["totals"]["direct_io"]["writes"] == 1
        });
        // Opened before the server stops (an open needs it too), so that
        // what waits is the write.
        let mut file = open();
        fs.stop_server();
        let stuck = std::thread::spawn(move || file.write_all(b"x").expect("write"));
        std::thread::sleep(Duration::from_secs(5));
        assert!(
            !stuck.is_finished(),
            "{mode}: the write did not wait for the stopped server"
        );
        fs.signal_server(libc::SIGCONT);
        stuck.join().expect("the stuck write returned");
        stream.wait_until("the stuck write counted", |last, _| {
            last["totals"]["direct_io"]["writes"] == 2
        });
        let (last, _) = stream.finish();
        let h = &last["health"];
        println!("{mode}: {h}");
        assert_eq!(last["totals"]["direct_io"]["writes"], 2, "{mode}: {last}");
        for k in ["inflight_full", "inflight_replaced", "exit_unmatched"] {
            assert_eq!(h[k], 0, "{mode}: {k}: {h}");
        }
        drop(fs);
    }
}
