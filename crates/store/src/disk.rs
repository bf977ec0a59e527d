//! How full the disk under the data directory is.

use std::ffi::CString;
use std::path::Path;

/// Space on the file system holding `path`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskUsage {
    pub total_bytes: u64,
    /// Free blocks, including those reserved for root.
    pub free_bytes: u64,
    /// Free blocks an unprivileged process may use.
    pub available_bytes: u64,
}

impl DiskUsage {
    /// Percentage used, as `df` counts it: used / (used + available). Space reserved for root
    /// (or otherwise unavailable) counts neither way, so a disk is 100 % full exactly when
    /// nothing more can be written.
    pub fn used_percent(&self) -> f64 {
        let used = self.total_bytes.saturating_sub(self.free_bytes);
        let usable = used + self.available_bytes;
        if usable == 0 {
            return 100.0;
        }
        100.0 * used as f64 / usable as f64
    }
}

/// Reads the usage of the file system holding `path`.
pub fn usage(path: &Path) -> std::io::Result<DiskUsage> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fragment = stat.f_frsize as u64;
    Ok(DiskUsage {
        total_bytes: stat.f_blocks as u64 * fragment,
        free_bytes: stat.f_bfree as u64 * fragment,
        available_bytes: stat.f_bavail as u64 * fragment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_like_df() {
        // 100 blocks, 60 free of which 10 reserved: 40 used of 90 usable.
        let u = DiskUsage {
            total_bytes: 100,
            free_bytes: 60,
            available_bytes: 50,
        };
        assert!((u.used_percent() - 100.0 * 40.0 / 90.0).abs() < 1e-9);
        assert_eq!(
            DiskUsage {
                total_bytes: 100,
                free_bytes: 10,
                available_bytes: 0
            }
            .used_percent(),
            100.0
        );
    }

    #[test]
    fn reads_the_temp_dir() {
        let u = usage(&std::env::temp_dir()).unwrap();
        assert!(u.total_bytes > 0);
        assert!((0.0..=100.0).contains(&u.used_percent()));
        assert!(usage(Path::new("/no/such/dir")).is_err());
    }
}
