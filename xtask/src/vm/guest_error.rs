//! How a guest can fail without saying anything about fuselock: a kernel
//! that panicked before our init spoke, or an oops, read from the console.

/// Why a failed VM run says nothing about fuselock and earns one more boot,
/// if it does: the guest kernel panicked before our init printed its first
/// line, or died of a stale breakpoint of live text patching ([`GuestOops::is_stale_patch_breakpoint`]).
/// Any other failure is a result.
pub fn earns_second_boot(e: &anyhow::Error) -> Option<String> {
    if let Some(never) = e.downcast_ref::<GuestNeverBooted>() {
        return Some(never.to_string());
    }
    e.downcast_ref::<GuestOops>()
        .filter(|oops| oops.is_stale_patch_breakpoint())
        .map(|oops| {
            format!("the guest kernel died of {oops}, a stale breakpoint of live text patching")
        })
}

/// The guest kernel panicked before our init printed its first line: nothing
/// of fuselock's had run.
#[derive(Debug)]
pub struct GuestNeverBooted {
    pub(super) kernel: String,
    pub(super) died_of: Option<GuestOops>,
}

impl std::fmt::Display for GuestNeverBooted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the guest kernel ({}) panicked", self.kernel)?;
        if let Some(oops) = &self.died_of {
            write!(f, " of {oops}")?;
        }
        f.write_str(" before the VM's init printed its first line")
    }
}

impl std::error::Error for GuestNeverBooted {}

/// A guest kernel oops read from the console: its kind (`int3`, `general
/// protection fault`, ...) and where it happened (`function+0x5/0x130`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestOops {
    pub kind: String,
    pub rip: String,
}

impl GuestOops {
    /// An unclaimed int3 at a function's patch site (the trap leaves RIP one
    /// byte past it: +0x1, or +0x5 after a 4-byte endbr/nop): a CPU ran a
    /// breakpoint byte of live text patching after the patcher had removed
    /// it and synchronised every CPU. The kernel's protocol rules that out
    /// on hardware, but under qemu's multi-threaded TCG it has happened when
    /// probes attached while another vCPU was entering the function.
    pub fn is_stale_patch_breakpoint(&self) -> bool {
        let offset = self
            .rip
            .split_once("+0x")
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok());
        self.kind == "int3" && matches!(offset, Some(1 | 5))
    }
}

impl std::fmt::Display for GuestOops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Oops: {} at {}", self.kind, self.rip)
    }
}

impl std::error::Error for GuestOops {}

/// Reads a kernel oops from console lines, one at a time: the `Oops:` line
/// gives its kind, the first kernel `RIP:` after it the place.
#[derive(Default)]
pub(super) struct OopsReader {
    pub(super) kind: Option<String>,
    pub(super) found: Option<GuestOops>,
}

impl OopsReader {
    pub(super) fn line(&mut self, line: &str) {
        if self.found.is_some() {
            return;
        }
        if let Some((_, rest)) = line.split_once("Oops: ") {
            let kind = rest.split(':').next().unwrap_or(rest).trim();
            self.kind = Some(kind.to_owned());
        } else if let (Some(kind), Some((_, rip))) = (&self.kind, line.split_once("RIP: 0010:")) {
            self.found = Some(GuestOops {
                kind: kind.clone(),
                rip: rip.trim().to_owned(),
            });
        }
    }
}
