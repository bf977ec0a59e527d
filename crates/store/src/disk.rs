//! How full the disk under the data directory is.

use std::ffi::CString;
use std::path::Path;

/// Space on the file system holding `path`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskUsage {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl DiskUsage {
    /// Percentage used, as `df` counts it (space reserved for root counts as used).
    pub fn used_percent(&self) -> f64 {
        if self.total_bytes == 0 {
            return 100.0;
        }
        100.0 * (self.total_bytes - self.available_bytes.min(self.total_bytes)) as f64 / self.total_bytes as f64
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
        available_bytes: stat.f_bavail as u64 * fragment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_temp_dir() {
        let u = usage(&std::env::temp_dir()).unwrap();
        assert!(u.total_bytes > 0);
        assert!((0.0..=100.0).contains(&u.used_percent()));
        assert!(usage(Path::new("/no/such/dir")).is_err());
    }
}
