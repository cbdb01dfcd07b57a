use std::{
    collections::HashSet,
    io::Read as _,
    process::Command,
    sync::{mpsc, Arc, Condvar},
    time::Duration,
};

use super::{account::choose_account, *};

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
    app:x:1879048192:100::/:/bin/sh\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nshared:x:1879048193:\n";

#[test]
fn the_fuselock_user_is_used_where_it_exists() {
    let passwd = format!("{PASSWD}fuselock:x:998:997::/nonexistent:/usr/sbin/nologin\n");
    let a = choose_account(&passwd, GROUP, &Default::default()).expect("account");
    assert_eq!((a.uid, a.gid), (998, 997));
    assert_eq!(a.source, "the fuselock user");
}

#[test]
fn without_it_an_id_nothing_uses_is_chosen_never_nobody() {
    // 1879048192 is an account's, ...193 a group's, ...194 a process's
    // uid, ...195 a process's gid.
    let procs = (
        HashSet::from([0, 1_879_048_194]),
        HashSet::from([0, 1_879_048_195]),
    );
    let a = choose_account(PASSWD, GROUP, &procs).expect("account");
    assert_eq!((a.uid, a.gid), (1_879_048_196, 1_879_048_196));
    assert!(a.source.contains("no fuselock user"), "{}", a.source);
    // A fuselock account with uid 0 is not one to drop to.
    let passwd = format!("{PASSWD}fuselock:x:0:0::/:/bin/sh\n");
    let a = choose_account(&passwd, GROUP, &procs).expect("account");
    assert_ne!(a.uid, 0);
    assert_eq!(a.uid, 1_879_048_196);
}

#[test]
fn a_threads_status_is_read_and_judged() {
    let status = "Name:\tfuselock\nUid:\t7\t7\t7\t7\nGid:\t8\t8\t8\t8\n\
        CapInh:\t0000000000000000\nCapPrm:\t0000008000000000\n\
        CapEff:\t0000008000000000\nCapBnd:\t000001ffffffffff\n\
        CapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
    let creds = TaskCreds::parse(status).expect("parsed");
    assert_eq!(creds.excess(1 << CAP_BPF, Some((7, 8))), None);
    assert!(creds
        .excess(0, None)
        .is_some_and(|w| w.contains("0x8000000000")));
    assert!(creds
        .excess(1 << CAP_BPF, Some((0, 0)))
        .is_some_and(|w| w.contains("uids [7, 7, 7, 7]")));
    let without_nnp = status.replace("NoNewPrivs:\t1", "NoNewPrivs:\t0");
    let creds = TaskCreds::parse(&without_nnp).expect("parsed");
    assert_eq!(
        creds.excess(1 << CAP_BPF, None).as_deref(),
        Some("has no no_new_privs")
    );
}

/// Set in the copy of the test binary that drops its privileges; names
/// the drop to make.
const CHILD: &str = "FUSELOCK_PRIVILEGES_TEST_CHILD";

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `test` again in a process of its own (a drop cannot be undone),
/// with `CHILD=mode`; its output when it passed.
fn in_child(test: &str, mode: &str) -> String {
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .output()
        .expect("run the child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{mode}: {text}");
    assert!(
        text.contains("CHILD OK"),
        "{mode}: the child did not run: {text}"
    );
    text
}

/// Threads started before the drop — one waiting on a condition
/// variable as tokio's idle blocking threads do, one sleeping, one
/// blocked reading a pipe — end up with exactly what the calling thread
/// keeps, by their own capget(2) and by /proc.
#[test]
fn threads_started_before_the_drop_drop_too() {
    const TEST: &str = "kernel::privileges::tests::threads_started_before_the_drop_drop_too";
    match std::env::var(CHILD).as_deref() {
        Ok(mode) => return drop_with_threads(mode),
        Err(_) if !is_root() => {
            eprintln!("SKIPPED: needs root, to have privileges to drop");
            return;
        }
        Err(_) => {}
    }
    let text = in_child(TEST, "bpf");
    assert!(text.contains("running as uid "), "{text}");
    in_child(TEST, "keep-uid");
}

fn drop_with_threads(mode: &str) {
    let parked = Arc::new((Mutex::new(false), Condvar::new()));
    let (report, reports) = mpsc::channel();
    let mut threads = Vec::new();
    threads.push(std::thread::spawn({
        let (parked, report) = (Arc::clone(&parked), report.clone());
        move || {
            let (lock, wake) = &*parked;
            let mut go = lock.lock().expect("lock");
            while !*go {
                go = wake.wait(go).expect("wait");
            }
            report
                .send(CapSets::current().expect("capget"))
                .expect("report");
        }
    }));
    threads.push(std::thread::spawn({
        let report = report.clone();
        move || {
            std::thread::sleep(Duration::from_millis(1500));
            report
                .send(CapSets::current().expect("capget"))
                .expect("report");
        }
    }));
    let (mut reader, mut writer) = std::io::pipe().expect("pipe");
    threads.push(std::thread::spawn(move || {
        let mut byte = [0];
        reader.read_exact(&mut byte).expect("read");
        report
            .send(CapSets::current().expect("capget"))
            .expect("report");
    }));
    std::thread::sleep(Duration::from_millis(100));
    let (dropped, keep, ids) = match mode {
        "bpf" => {
            let d = drop_to_bpf_only().expect("drop");
            let a = d.now.clone().expect("left root");
            assert_ne!(a.uid, 0);
            assert_ne!(a.uid, 65_534, "never the shared nobody");
            (d, 1 << CAP_BPF, Some((a.uid, a.gid)))
        }
        "keep-uid" => {
            let d = drop_capabilities_keeping_uid().expect("drop");
            assert!(d.now.is_none());
            (d, 0, None)
        }
        other => panic!("unknown mode {other}"),
    };
    assert!(dropped.other_threads >= 3, "{dropped:?}");
    check_every_thread(keep, ids).expect("every thread dropped");
    *parked.0.lock().expect("lock") = true;
    parked.1.notify_all();
    std::io::Write::write_all(&mut writer, b"x").expect("write");
    for _ in 0..3 {
        let sets = reports
            .recv_timeout(Duration::from_secs(10))
            .expect("a thread's report");
        assert_eq!(sets.permitted, keep, "{sets:?}");
        assert_eq!(sets.effective, keep, "{sets:?}");
        assert_eq!(sets.inheritable, 0, "{sets:?}");
    }
    for t in threads {
        t.join().expect("thread");
    }
    println!("{dropped}\nCHILD OK");
}
