//! What `fuselock --version` prints: the version, the git commit it was built
//! from and a hash of the embedded eBPF object, so a bug report names exactly
//! what ran. build.rs computes both; a test below checks the hash against
//! the bytes this binary actually embeds.

/// `0.1.0 (commit 0123456789ab, eBPF object sha256 0123456789ab)`, or
/// `(unknown commit, …)` when built outside a git checkout.
pub const VERSION: &str = env!("FUSELOCK_VERSION");

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::VERSION;
    use crate::kernel::probes::PROBES_OBJECT;

    #[test]
    fn version_names_the_hash_of_the_embedded_object() {
        assert!(!PROBES_OBJECT.is_empty(), "no eBPF object embedded");
        let hex: String = Sha256::digest(PROBES_OBJECT)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(env!("FUSELOCK_EBPF_SHA256"), hex);
        assert!(
            VERSION.ends_with(&format!(", eBPF object sha256 {})", &hex[..12])),
            "{VERSION}"
        );
        assert!(VERSION.starts_with(concat!(env!("CARGO_PKG_VERSION"), " (")));
    }
}
