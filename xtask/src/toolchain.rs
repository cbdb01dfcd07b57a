//! The pinned toolchains, from the workspace's `toolchains.toml`, their one
//! source of truth, and the cargo that builds with them.
//!
//! `cargo xtask` itself runs on whatever toolchain the machine has (it
//! needs nothing new), and hands every build, lint and test to the pinned
//! `stable` with an explicit `cargo +VERSION`.

use std::process::Command;

use crate::cache;

const PINS: &str = include_str!("../../toolchains.toml");

/// The value of `key` in `toolchains.toml`.
fn pin(text: &'static str, key: &str) -> Option<&'static str> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix(key)?.trim_start();
        let value = value.strip_prefix('=')?.trim();
        value.strip_prefix('"')?.strip_suffix('"')
    })
}

/// The toolchain of userspace, xtask's builds and the tests (`1.99.1`).
pub fn stable() -> &'static str {
    // `toolchains_toml_names_both_pins` checks the file at test time.
    pin(PINS, "stable").unwrap_or("toolchains.toml names no stable toolchain")
}

/// The eBPF programs' nightly (`nightly-2026-10-29`).
pub fn nightly() -> &'static str {
    pin(PINS, "ebpf").unwrap_or("toolchains.toml names no ebpf toolchain")
}

/// `cargo +STABLE` in the workspace, without the variables that the cargo
/// running xtask set for its own toolchain.
pub fn cargo() -> Command {
    toolchain_cargo(stable())
}

/// `cargo +TOOLCHAIN` in the workspace (see [`cargo`]).
pub fn toolchain_cargo(toolchain: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{toolchain}"))
        .current_dir(cache::workspace_root())
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toolchains_toml_names_both_pins() {
        assert_eq!(
            pin("[toolchains]\nstable = \"1.2.3\"\n", "stable"),
            Some("1.2.3")
        );
        assert_eq!(pin("[toolchains]\nebpf = \"x\"\n", "stable"), None);
        let stable = pin(PINS, "stable").expect("a stable pin");
        assert!(
            stable.split('.').count() == 3
                && stable.chars().all(|c| c.is_ascii_digit() || c == '.'),
            "{stable} is not an exact version"
        );
        let nightly = pin(PINS, "ebpf").expect("an ebpf pin");
        let date = nightly.strip_prefix("nightly-").expect("a nightly");
        assert_eq!(date.len(), "2026-10-29".len(), "{nightly} is not dated");
    }
}
