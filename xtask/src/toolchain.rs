//! The pinned toolchains, read from the project's own `rust-toolchain.toml`
//! files, which are their one source of truth: the workspace's (userspace,
//! xtask, tests) and `probes-ebpf`'s (the eBPF programs' dated nightly).

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::cache;

/// The `channel` of a `rust-toolchain.toml`.
fn channel_of(text: &str) -> Option<&str> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("channel")?.trim_start();
        let value = value.strip_prefix('=')?.trim();
        value.strip_prefix('"')?.strip_suffix('"')
    })
}

fn channel_in(file: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    channel_of(&text)
        .map(str::to_owned)
        .with_context(|| format!("{} names no channel", file.display()))
}

/// The workspace's toolchain (`1.99.1`).
pub fn stable() -> Result<String> {
    channel_in(&cache::workspace_root().join("rust-toolchain.toml"))
}

/// The eBPF programs' nightly (`nightly-2026-10-29`).
pub fn nightly() -> Result<String> {
    channel_in(&cache::workspace_root().join("probes-ebpf/rust-toolchain.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_is_read_from_the_toolchain_file() {
        let text =
            "# a comment\n[toolchain]\nchannel = \"nightly-2026-10-29\"\nprofile = \"minimal\"\n";
        assert_eq!(channel_of(text), Some("nightly-2026-10-29"));
        assert_eq!(channel_of("[toolchain]\nprofile = \"minimal\"\n"), None);
    }

    #[test]
    fn both_pins_are_exact_versions() {
        let stable = stable().expect("workspace toolchain");
        assert!(
            stable.split('.').count() == 3
                && stable.chars().all(|c| c.is_ascii_digit() || c == '.'),
            "{stable} is not an exact version"
        );
        let nightly = nightly().expect("eBPF toolchain");
        let date = nightly.strip_prefix("nightly-").expect("a nightly");
        assert_eq!(date.len(), "2026-10-29".len(), "{nightly} is not dated");
    }
}
