//! `cargo xtask`: everything around the code — toolchain set-up, static
//! builds, the VM that runs fuselock on a kernel with kprobes, and the test
//! suite.

mod apt;
mod bench;
mod build;
mod cache;
mod cpio;
mod debian_kernel;
mod dist;
mod fuzz;
mod install_test;
mod kernel;
mod libfuse;
mod setup;
mod test;
mod toolchain;
mod vm;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "fuselock's development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent; says what it does).
    Setup(setup::SetupArgs),
    /// Build the static (musl) fuselock binary used in the VM.
    Build,
    /// Build Linux 6.12 or 7.3 (--line) with and without the parallel-direct-writes series (cached).
    Kernel(kernel::KernelArgs),
    /// Boot a kernel in qemu with fuselock on PATH and run a command there.
    Vm(vm::VmArgs),
    /// Write the man page to target/man/fuselock.1.
    Man,
    /// Build what a user installs: a static stripped binary in a tarball with
    /// the man page, completions and systemd unit, a .deb, and SHA256SUMS.
    Dist(dist::DistArgs),
    /// Overhead benchmark in the VM: fuselock vs no tracer vs bpftrace, ratios.
    Bench(bench::BenchArgs),
    /// Run each fuzz target for a bounded time from its committed corpus.
    Fuzz(fuzz::FuzzArgs),
    /// The whole test suite: formatting, lints, host tests, fuzzing, VM tests.
    Test(test::TestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<i32> = match cli.command {
        Cmd::Setup(args) => setup::run(&args).map(|()| 0),
        Cmd::Build => build::fuselock_static().map(|p| {
            println!("{}", p.display());
            0
        }),
        Cmd::Kernel(args) => kernel::run(&args).map(|()| 0),
        Cmd::Vm(args) => vm::run_cli(&args),
        Cmd::Man => build::man_page().map(|p| {
            println!("{}", p.display());
            0
        }),
        Cmd::Dist(args) => dist::run_cli(&args).map(|()| 0),
        Cmd::Bench(args) => bench::run(&args).map(|()| 0),
        Cmd::Fuzz(args) => fuzz::run(&args).map(|()| 0),
        Cmd::Test(args) => test::run(&args).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
