//! `fuselock stat` and `fuselock record`: snapshots as a table or JSON
//! lines, for a command's lifetime or every interval until interrupted.

use std::{
    ffi::OsString,
    io::{self, Write},
    os::unix::process::ExitStatusExt,
    process::ExitStatus,
    time::Duration,
};

use anyhow::{Context as _, Result};

use fuselock_base::{escape, UsageError};

use crate::{
    cli::{RecordArgs, StatArgs},
    commands::{
        session::Session,
        signals::{Ending, Endings},
    },
    model::snapshot::Snapshot,
    wire::{format::SnapshotFormat, stream::Lines},
};

/// Where snapshots go and how.
pub struct Sink {
    out: Box<dyn Write + Send>,
    format: SnapshotFormat,
}

impl Sink {
    fn emit(&mut self, snap: &Snapshot) -> Result<()> {
        self.format
            .write(snap, &mut self.out)
            .context("writing snapshots")?;
        self.out.flush().context("writing snapshots")
    }
}

/// The shell's convention for a child's exit status.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// One observation run.
struct Observe {
    interval: Duration,
    command: Vec<OsString>,
    /// Emit every interval even while a command runs (record does; stat
    /// prints only the final counts then).
    periodic_with_command: bool,
    sink: Sink,
}

async fn observe(session: &mut Session, mut o: Observe) -> Result<i32> {
    let collector = &mut session.collector;
    let mut endings = Endings::install()?;
    let mut ticker = tokio::time::interval(o.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    if let Some((program, rest)) = o.command.split_first() {
        let mut child = tokio::process::Command::new(program)
            .args(rest)
            .spawn()
            .with_context(|| format!("cannot run `{}`", program.to_string_lossy()))?;
        // The command keeps the caller's privileges; fuselock does not need them.
        if let Err(e) = crate::kernel::privileges::drop_to_bpf_only() {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(e);
        }
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.context("waiting for the command")?,
                _ = ticker.tick(), if o.periodic_with_command => o.sink.emit(&collector.snapshot(false)?)?,
                // Ctrl-C reaches the whole foreground group: the command
                // decides what it means; we report once it has exited.
                ending = endings.recv() => if ending != Ending::Interrupt { let _ = child.start_kill(); },
            }
        };
        o.sink.emit(&collector.snapshot(true)?)?;
        return Ok(exit_code(status));
    }

    crate::kernel::privileges::drop_to_bpf_only()?;
    // The first tick is immediate: a snapshot right after attaching tells
    // scripts (and people) that fuselock is live.
    loop {
        tokio::select! {
            _ = ticker.tick() => o.sink.emit(&collector.snapshot(false)?)?,
            _ = endings.recv() => break,
        }
    }
    o.sink.emit(&collector.snapshot(true)?)?;
    Ok(0)
}

pub async fn run(args: StatArgs) -> Result<i32> {
    let mut session = Session::start(&args.probes)?;
    observe(
        &mut session,
        Observe {
            interval: args.interval,
            command: args.command,
            periodic_with_command: false,
            sink: Sink {
                out: Box::new(io::stdout()),
                format: match (args.json, args.every_entry) {
                    (false, _) => SnapshotFormat::Table,
                    (true, true) => SnapshotFormat::json_lines(Lines::Whole),
                    (true, false) => SnapshotFormat::json_lines(Lines::Deltas),
                },
            },
        },
    )
    .await
}

/// `record FILE`: the `stat --json` stream into a file, for `top --replay`.
/// The probes attach first, so a run that cannot attach leaves no file; the
/// file is new (or, with `--force`, an existing regular file of the caller's
/// with no other name), never reached through a symlink in its last
/// component, and private (0600): it names processes and files.
pub async fn record(args: RecordArgs) -> Result<i32> {
    let mut session = Session::start(&args.probes)?;
    let file = create_private(&args.file, args.force)?;
    observe(
        &mut session,
        Observe {
            interval: args.interval,
            command: args.command,
            periodic_with_command: true,
            sink: Sink {
                out: Box::new(io::BufWriter::new(file)),
                format: SnapshotFormat::json_lines(Lines::Deltas),
            },
        },
    )
    .await
}

/// Creates `path` for writing, mode 0600, without following a symlink in its
/// last component; an existing file is refused unless `force`, and then only
/// a regular file the caller owns with one link is truncated (see
/// [`refusal`]).
fn create_private(path: &std::path::Path, force: bool) -> Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let shown = escape::path(path);
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .mode(0o600)
        // O_NONBLOCK: a FIFO planted at PATH fails instead of hanging.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK);
    if force {
        options.create(true);
    } else {
        options.create_new(true);
    }
    let file = options.open(path).map_err(|e| {
        let is_symlink = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        match e.raw_os_error() {
            Some(libc::EEXIST | libc::ELOOP) if is_symlink => UsageError(format!(
                "{shown} is a symbolic link: fuselock does not write through one"
            )),
            Some(libc::EEXIST) => UsageError(format!(
                "{shown} exists: name a new file, or pass --force to replace it"
            )),
            _ => UsageError(format!("cannot create {shown}: {e}")),
        }
    })?;
    let meta = file.metadata().with_context(|| format!("stat {shown}"))?;
    // SAFETY: getuid(2) cannot fail.
    let caller = unsafe { libc::getuid() };
    if let Some(why) = refusal(&meta, caller) {
        return Err(UsageError(format!("{shown} {why}")).into());
    }
    // Truncate only now that it is known to be a regular file of our choosing,
    // and make a replaced file private too.
    file.set_len(0)
        .with_context(|| format!("truncating {shown}"))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {shown} private"))?;
    Ok(file)
}

/// Why `record` must not truncate the file `meta` describes for the user of
/// real uid `caller`, if it must not. The file is opened while fuselock is
/// still privileged: with `--force`, root could otherwise empty a file of
/// someone else's that was put (or hard-linked) at a path the caller named.
fn refusal(meta: &std::fs::Metadata, caller: libc::uid_t) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    if !meta.is_file() {
        return Some("is not a regular file".to_owned());
    }
    if meta.uid() != caller {
        return Some(format!(
            "belongs to uid {}, not to you (uid {caller}): fuselock replaces only your own files",
            meta.uid()
        ));
    }
    if meta.nlink() > 1 {
        return Some(format!(
            "has {} hard links: replacing it would change the other names' file too; remove it \
             first or name another file",
            meta.nlink()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fuselock-record-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    /// `--force` replaces the caller's own file, and makes it private.
    #[test]
    fn force_replaces_a_file_of_ones_own() {
        let dir = dir("own");
        let path = dir.join("rec.jsonl");
        std::fs::write(&path, b"old").expect("write");
        let err = create_private(&path, false).expect_err("exists");
        assert!(format!("{err:#}").contains("exists"), "{err:#}");
        create_private(&path, true).expect("replaced");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (0, 0o600));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A hard link to another file (one of root's, say) is not truncated.
    #[test]
    fn force_refuses_a_hard_linked_file() {
        let dir = dir("linked");
        let precious = dir.join("precious");
        std::fs::write(&precious, b"precious").expect("write");
        let path = dir.join("rec.jsonl");
        std::fs::hard_link(&precious, &path).expect("link");
        let err = create_private(&path, true).expect_err("hard-linked");
        assert!(format!("{err:#}").contains("has 2 hard links"), "{err:#}");
        assert!(err.downcast_ref::<UsageError>().is_some(), "exit status 3");
        assert_eq!(std::fs::read(&precious).expect("read"), b"precious");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A file of another user's is not truncated, even by root.
    #[test]
    fn force_refuses_someone_elses_file() {
        let dir = dir("other");
        let path = dir.join("rec.jsonl");
        std::fs::write(&path, b"theirs").expect("write");
        let meta = std::fs::metadata(&path).expect("stat");
        let why = refusal(&meta, meta.uid() + 1).expect("another uid's file");
        assert!(
            why.contains(&format!("belongs to uid {}", meta.uid())),
            "{why}"
        );
        assert_eq!(refusal(&meta, meta.uid()), None);
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).expect("chown");
            let err = create_private(&path, true).expect_err("someone else's");
            assert!(
                format!("{err:#}").contains("belongs to uid 65534"),
                "{err:#}"
            );
            assert_eq!(std::fs::read(&path).expect("read"), b"theirs");
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
