//! Command-line interface.

use std::{ffi::OsString, time::Duration};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use fuselock_testkit::{testfs::TestfsArgs, workload::LoadArgs};
use probes_common::config::Ablation;

use crate::{collect::cgroups::WatchOnly, kernel::probes::ProbeMode};

#[derive(Debug, Parser)]
#[command(
    name = "fuselock",
    version = crate::version::VERSION,
    about = "Shows which inode lock Linux takes for FUSE passthrough writes - shared or exclusive - and why",
    long_about = None,
)]
pub struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Count FUSE write lock acquisitions per inode; print a table or JSON lines.
    #[command(after_help = "Examples:\n  \
        fuselock stat -- fio --name=w --rw=randwrite --direct=1 --filename=/mnt/fuse/f --size=64m\n  \
        fuselock stat --json --interval 5 > counts.jsonl")]
    Stat(StatArgs),
    /// The live terminal UI: what serializes, why, and who waits.
    #[command(after_help = "Examples:\n  \
        sudo fuselock top\n  \
        fuselock top --replay run.jsonl      # no kernel, no root needed\n\n\
        Keys: arrows/jk move, s/S sort, / filter, f freeze, r reset, t rates/totals,\n\
        Enter detail, Esc back, m mouse, ? help, q quit.")]
    Top(TopArgs),
    /// Write the snapshot stream (JSON lines, the `stat --json` schema) to FILE.
    #[command(
        after_help = "Example:\n  sudo fuselock record run.jsonl -- fio job.fio && fuselock top --replay run.jsonl"
    )]
    Record(RecordArgs),
    /// Does the parallel-direct-writes patch take effect? Prints ACTIVE (exit 0),
    /// NOT ACTIVE (1) or INCONCLUSIVE (2) with the evidence.
    #[command(after_help = "Examples:\n  \
        fuselock verify --exercise /mnt/fuse/somedir\n  \
        fuselock verify --duration 60 --json\n  \
        fuselock verify -- fio --name=w --rw=randwrite --direct=1 --filename=/mnt/fuse/f --size=64m\n\n\
        Exit status: 0 ACTIVE, 1 NOT ACTIVE, 2 INCONCLUSIVE, 3 bad usage, 4 cannot run,\n\
        5 shared-lock writes grew the file (the series' EOF race).")]
    Verify(VerifyArgs),
    /// Check whether fuselock can run on this host, one line per requirement.
    #[command(after_help = "Example:\n  sudo fuselock doctor && sudo fuselock export")]
    Doctor,
    /// Serve the counters to Prometheus (OpenMetrics or text format) over HTTP or HTTPS.
    #[command(after_help = "Examples:\n  \
        fuselock export                               # http://127.0.0.1:9948/metrics\n  \
        fuselock export --listen 0.0.0.0:9948 --web.config.file /etc/fuselock/web.yml\n\n\
        A web config (TLS, basic auth; deploy/web.yml) protects an address beyond loopback.")]
    Export(ExportArgs),
    /// Mount the built-in passthrough test file system, run a mixed workload,
    /// show the counts and the verdict, clean up.
    #[command(
        after_help = "Example (on a machine without kprobes, in the VM):\n  cargo xtask vm -- fuselock demo"
    )]
    Demo(DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Example:\n  fuselock completions bash > /etc/bash_completion.d/fuselock"
    )]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff); `cargo xtask man` writes it to target/man.
    #[command(hide = true)]
    Manpage,
    /// A small FUSE passthrough server exposing the files of a directory.
    #[command(
        after_help = "Example:\n  fuselock testfs --backing /srv/data --mountpoint /mnt/fuse --parallel"
    )]
    Testfs(TestfsArgs),
    /// Deletes return probes' tracefs events once stdin ends (started by
    /// fuselock itself, so that a killed fuselock leaves no event behind).
    #[command(hide = true)]
    ReapProbeEvents {
        tracefs: std::path::PathBuf,
        events: Vec<String>,
    },
    /// Issue N writes of one kind to a file from T threads.
    #[command(
        after_help = "Example:\n  fuselock load /mnt/fuse/f --kind overwrite --writes 8000 --threads 4"
    )]
    Load(LoadArgs),
}

/// Set by the man page's rendering: help then names no host's figures.
static FOR_ANY_HOST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Help text from here on describes any host, not the one running
/// fuselock (for the man page, which is rendered at build time).
pub fn help_for_any_host() {
    FOR_ANY_HOST.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// `--max-inodes`' long help, with the kernel memory fuselock takes on
/// this host (the kernel sizes per-CPU maps by its possible CPUs).
fn max_inodes_help() -> String {
    let max = probes_common::maps::DEFAULT_MAX_INODES;
    let this_host = (!FOR_ANY_HOST.load(std::sync::atomic::Ordering::Relaxed))
        .then(crate::kernel::memory::possible_cpus)
        .flatten();
    let memory = this_host.map_or_else(
        || {
            let per_file = crate::kernel::memory::estimate(1, max).per_file;
            format!(
                "Kernel memory: about 70 KiB per possible CPU (`fuselock doctor` gives this \
                 host's figure), plus about {:.1} KiB per file written, allocated when first \
                 written.",
                per_file as f64 / 1024.0
            )
        },
        |cpus| {
            format!(
                "Kernel memory on this host: {}.",
                crate::kernel::memory::estimate(cpus, max).describe(max)
            )
        },
    );
    format!(
        "Files watched one by one at most: when the per-file map nears it, the files written \
         longest ago are forgotten (counted as evictions; their writes stay in the totals). \
         {memory}"
    )
}

fn parse_ablation(name: &str) -> Result<Ablation, String> {
    Ablation::ALL
        .into_iter()
        .find(|a| a.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = Ablation::ALL.iter().map(|a| a.name()).collect();
            format!("one of {}", names.join(", "))
        })
}

/// Options shared by every command that attaches probes.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// How to hook kernel functions.
    #[arg(long, value_enum, default_value_t = ProbeMode::Auto)]
    pub probe_mode: ProbeMode,
    /// Files watched one by one at most: when the per-file map nears it,
    /// the files written longest ago are forgotten (counted as evictions;
    /// their writes stay in the totals).
    #[arg(long, default_value_t = probes_common::maps::DEFAULT_MAX_INODES,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576),
          long_help = max_inodes_help())]
    pub max_inodes: u32,
    /// Also measure how often and how long writers wait for the FUSE inode
    /// lock, from the lock:contention_begin/end tracepoints. They fire on
    /// every contended lock on the host, not only FUSE ones: in the VM
    /// benchmark they cost a lock-heavy unrelated workload about 11 % in
    /// time (0.5 % of its CPU in the programs themselves). Without this flag
    /// fuselock hooks only FUSE functions, and the wait columns stay empty.
    #[arg(long)]
    pub contention: bool,
    /// Count only the writes and opens of tasks under this cgroup v2
    /// directory, in the kernel (as `perf lock contention -G` filters): a
    /// path from the hierarchy's root (`/kubepods.slice/…`) or under its
    /// mount point (`/sys/fs/cgroup/…`).
    #[arg(long, value_name = "PATH", conflicts_with = "pod")]
    pub cgroup: Option<String>,
    /// Count only the writes and opens of this pod's processes, given as
    /// NAMESPACE/NAME: its UID comes from the node's /var/log/pods, its
    /// cgroup from kubelet's layout (systemd or cgroupfs driver).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub pod: Option<WatchOnly>,
    /// Log every write from the kernel through aya-log (costly: debugging only).
    #[arg(long)]
    pub debug_probes: bool,
    /// Benchmarks only: switch parts of the accounting off, to measure
    /// what each costs (`cargo xtask bench --sections ablation`). Counts are
    /// then incomplete.
    #[arg(long, hide = true, value_delimiter = ',', value_parser = parse_ablation)]
    pub ablate: Vec<Ablation>,
    /// No effect, kept so that scripts passing it still run: a write's
    /// in-flight record lives in its task's BPF storage, which the kernel
    /// frees with the task, so there is nothing to age out.
    #[arg(long, hide = true, value_name = "SECS",
          value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub inflight_max_age: Option<u32>,
}

#[derive(Debug, Args)]
pub struct StatArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// One JSON object per line per snapshot (schema in docs/json.md). After
    /// the first line, a line lists only the entries that changed
    /// (`"delta": true`); the final line lists every entry.
    #[arg(long)]
    pub json: bool,
    /// With --json: list every entry on every line, not only changed ones
    /// (megabytes per line with thousands of live inodes, and as much memory
    /// to keep unchanged entries' JSON).
    #[arg(long, requires = "json")]
    pub every_entry: bool,
    /// Seconds between snapshots when no COMMAND is given (0.1 to 3600).
    #[arg(long, default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,
    /// Run COMMAND under observation; print the final counts when it exits and
    /// exit with its status.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// Seconds between refreshes (0.1 to 3600).
    #[arg(long, default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,
    /// Play back a file written by `fuselock record` instead of attaching.
    #[arg(long, value_name = "FILE")]
    pub replay: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// The file to write (JSON lines, mode 0600). It must not exist yet.
    pub file: std::path::PathBuf,
    /// Replace FILE if it exists: a regular file of yours with no other hard
    /// link, never reached through a symlink.
    #[arg(long)]
    pub force: bool,
    /// Seconds between snapshots (0.1 to 3600).
    #[arg(long, default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,
    /// Record while COMMAND runs (then exit with its status); else until Ctrl-C.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// Address to serve /metrics and /healthz on. Loopback by default: only
    /// counters are served, but say so explicitly to expose them further.
    #[arg(long, default_value = "127.0.0.1:9948")]
    pub listen: std::net::SocketAddr,
    /// Also export per-inode series for the K inodes with most writes
    /// (labels dev, ino, name: keep K small, cardinality grows with it).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub per_inode_top: u16,
    /// Also export writes per Kubernetes pod (fuselock_pod_writes_total,
    /// labels namespace, pod, uid) for the first K pods seen writing; later
    /// pods are summed into pod="=other" and counted. Needs the node's
    /// /sys/fs/cgroup and /var/log/pods (the DaemonSet mounts both).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub per_pod_top: u16,
    /// Mounts exported by name at most: the first N seen keep their own
    /// series (mount label), later ones are summed into mount="other", and
    /// fuselock_export_folded_mounts says how many. Bounds the series a host
    /// with many FUSE mounts adds to Prometheus.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub max_mounts: u16,
    /// Connections one client address may hold at once (of 64 in all):
    /// more are closed as soon as accepted, so that one host cannot take
    /// every connection from the scrapers.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_connections_per_peer: u16,
    /// TLS, basic auth and response headers from FILE, in the web config
    /// format of Prometheus' exporter-toolkit (as node_exporter reads it).
    /// Loaded again when it or a file it names changes, and on SIGHUP.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// Drive a short workload on a scratch file of fuselock's own, created
    /// in PATH (a directory on a FUSE passthrough mount) or beside PATH (a
    /// file there), and decide on its writes alone. Nothing of the user's is
    /// written; the scratch file is removed afterwards.
    #[arg(long, value_name = "PATH", conflicts_with = "command")]
    pub exercise: Option<std::path::PathBuf>,
    /// Seconds to watch real traffic when neither --exercise nor COMMAND is given.
    #[arg(long, default_value = "10", value_parser = parse_interval)]
    pub duration: Duration,
    /// Print the verdict, its evidence and the kernel release as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Print progress while exercising even when stderr is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Decide on the writes made while COMMAND runs.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// Accepts 0.1 ..= 3600 seconds.
pub fn parse_interval(s: &str) -> Result<Duration> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() || !(0.1..=3600.0).contains(&secs) {
        bail!("interval must be between 0.1 and 3600 seconds, got {s}");
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// Mount without asking for FOPEN_PARALLEL_DIRECT_WRITES.
    #[arg(long)]
    pub no_parallel: bool,
    /// Open `top` on the mount while the workload repeats, instead of
    /// printing counts and a verdict (q quits and cleans up).
    #[arg(long)]
    pub top: bool,
    /// Writes per kind (overwrite, buffered, append, past-eof).
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub writes: u64,
    /// Internal: the demo's mount keeper, a child that mounts the test file
    /// system, runs the `--top` workload and cleans up, so that the demo
    /// itself can drop to CAP_BPF and another user.
    #[arg(long, hide = true, conflicts_with = "top")]
    pub keeper: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn interval_bounds() {
        assert_eq!(parse_interval("2").expect("2"), Duration::from_secs(2));
        assert_eq!(
            parse_interval("0.5").expect("0.5"),
            Duration::from_millis(500)
        );
        for bad in ["0", "0.01", "-1", "nan", "inf", "abc", "3601"] {
            assert!(parse_interval(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn stat_takes_a_command_after_dashes() {
        let cli = Cli::try_parse_from(["fuselock", "stat", "--json", "--", "dd", "if=/dev/zero"])
            .expect("parse");
        let Command::Stat(s) = cli.command else {
            panic!("not stat")
        };
        assert!(s.json);
        assert_eq!(s.command, ["dd", "if=/dev/zero"]);
    }
}
