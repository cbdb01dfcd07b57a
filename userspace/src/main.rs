//! `fuselock`: which inode lock Linux takes for FUSE passthrough writes, and why.
//!
//! The binary parses the command line, dispatches to the library's commands
//! and turns their results into exit statuses.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;

use fuselock::{
    cli::{Cli, Command},
    commands::{demo, doctor, export, stat, top, verify},
    exit,
    kernel::{kretprobe, preflight},
};
use fuselock_base::UsageError;
use fuselock_testkit::{testfs, workload};

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .format_target(false)
        .init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli) -> Result<i32> {
    preflight::check_not_setuid()?;
    match cli.command {
        Command::Stat(args) => runtime()?.block_on(stat::run(args)),
        Command::Record(args) => runtime()?.block_on(stat::record(args)),
        Command::Top(args) => top::run(args),
        Command::Doctor => Ok(doctor::run()),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "fuselock",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Manpage => {
            fuselock::cli::help_for_any_host();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut std::io::stdout())
                .context("writing the man page")?;
            Ok(0)
        }
        Command::Demo(args) => runtime()?.block_on(demo::run(args)),
        Command::Export(args) => runtime()?.block_on(export::run(args)),
        Command::Verify(args) => runtime()?.block_on(verify::run(args)).map(i32::from),
        Command::Testfs(args) => testfs::run(&args).map(|()| 0),
        Command::ReapProbeEvents { tracefs, events } => Ok(kretprobe::reap(&tracefs, &events)),
        Command::Load(args) => {
            let report = workload::run(&args)?;
            Ok(if report.errors == 0 { 0 } else { 1 })
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(exit::USAGE),
            };
        }
    };
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
        // The reader went away (`fuselock stat | head`): not an error, as
        // for any Unix filter.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .map(std::io::Error::kind)
                    .or_else(|| {
                        c.downcast_ref::<serde_json::Error>()
                            .and_then(serde_json::Error::io_error_kind)
                    })
                    == Some(std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fuselock: {e:#}");
            if e.chain().any(|c| c.is::<UsageError>()) {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::from(exit::FAILURE)
            }
        }
    }
}
