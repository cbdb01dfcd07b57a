//! Device numbers as the kernel keeps them.

use core::fmt;

/// A device number in the kernel's internal `dev_t` encoding (`MAJOR << 20 |
/// MINOR`, `include/linux/kdev_t.h`), the `dev` of every map key. Shown and
/// written as `"MAJ:MIN"`, as `/proc/self/mountinfo` prints it.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dev(pub u32);

impl Dev {
    const MINOR_BITS: u32 = 20;
    const MINOR_MASK: u32 = (1 << Self::MINOR_BITS) - 1;

    pub const fn major(self) -> u32 {
        self.0 >> Self::MINOR_BITS
    }

    pub const fn minor(self) -> u32 {
        self.0 & Self::MINOR_MASK
    }

    /// The device of a userspace `dev_t` (`stat`'s `st_dev`), given its
    /// major and minor numbers; `None` if they do not fit the kernel's
    /// 12 + 20 bits.
    pub const fn from_parts(major: u32, minor: u32) -> Option<Dev> {
        if major >> (32 - Self::MINOR_BITS) != 0 || minor > Self::MINOR_MASK {
            return None;
        }
        Some(Dev((major << Self::MINOR_BITS) | minor))
    }

    /// `"MAJ:MIN"`, as mountinfo and this type's `Display` write it.
    pub fn parse(s: &str) -> Option<Dev> {
        let (major, minor) = s.split_once(':')?;
        Dev::from_parts(major.parse().ok()?, minor.parse().ok()?)
    }
}

impl fmt::Display for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major(), self.minor())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_text_round_trip() {
        let sda1 = Dev((8 << 20) | 1);
        assert_eq!((sda1.major(), sda1.minor()), (8, 1));
        assert_eq!(Dev::from_parts(8, 1), Some(sda1));
        assert_eq!(Dev::parse("8:1"), Some(sda1));
        assert_eq!(Dev::parse("0:45"), Some(Dev(45)));
        assert_eq!(Dev::from_parts(4096, 0), None);
        assert_eq!(Dev::from_parts(0, 1 << 20), None);
        for bad in ["", "8", "8:", ":1", "a:1", "8:1:2", "-1:1"] {
            assert_eq!(Dev::parse(bad), None, "{bad}");
        }
    }
}
