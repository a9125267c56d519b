//! `qo bench --memory-mb N`: this process at the CPU share Lambda gives a function of `N` MB.
//!
//! Lambda allocates CPU in proportion to memory: at 1,769 MB a function has one vCPU-second
//! per second, so 128 MB has about 7% of one. [`CpuCap::apply`] puts the whole process (every
//! thread) in a cgroup of its own whose CPU quota is that share of each 100 ms period, through
//! cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`), and moves it back and removes the group
//! when dropped. It needs write access to the cgroup file system (root, outside a container
//! that hides it); without it the bench refuses with the reason, rather than measure at full
//! speed.

use std::fs;
use std::path::{Path, PathBuf};

/// Memory at which a Lambda function has one vCPU-second per second.
pub const MB_PER_VCPU: f64 = 1769.0;

/// The CFS period the quota is set over, in microseconds (Linux's default).
const PERIOD_US: u64 = 100_000;

/// The share of one CPU Lambda gives a function of `mb` MB.
pub fn share_for_memory_mb(mb: u32) -> f64 {
    f64::from(mb) / MB_PER_VCPU
}

/// Why the process could not be capped.
#[derive(Debug, thiserror::Error)]
pub enum CapError {
    /// No cgroup file system with a CPU controller this process can write.
    #[error(
        "cannot cap the CPU: no writable cgroup with a cpu controller at /sys/fs/cgroup \
         (cgroup v2 with `cpu` in cgroup.subtree_control, or v1's /sys/fs/cgroup/cpu); \
         run as root on a host that exposes it"
    )]
    NoCgroup,
    /// A cgroup file could not be written.
    #[error("cannot cap the CPU: {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Where the CPU controller lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The process inside a CPU-capped cgroup, until dropped.
#[derive(Debug)]
pub struct CpuCap {
    group: PathBuf,
    /// The `cgroup.procs` the process goes back to.
    home: PathBuf,
    share: f64,
}

impl CpuCap {
    /// Moves this process into a new cgroup capped at `share` of one CPU.
    pub fn apply(share: f64) -> Result<CpuCap, CapError> {
        let (root, version) = controller().ok_or(CapError::NoCgroup)?;
        let group = root.join(format!("qo-bench-{}", std::process::id()));
        let write = |path: PathBuf, value: String| {
            fs::write(&path, value).map_err(|source| CapError::Write { path, source })
        };
        fs::create_dir_all(&group).map_err(|source| CapError::Write {
            path: group.clone(),
            source,
        })?;
        let quota = ((share * PERIOD_US as f64).round() as u64).max(1_000);
        match version {
            Version::V2 => write(group.join("cpu.max"), format!("{quota} {PERIOD_US}"))?,
            Version::V1 => {
                write(group.join("cpu.cfs_period_us"), PERIOD_US.to_string())?;
                write(group.join("cpu.cfs_quota_us"), quota.to_string())?;
            }
        }
        write(group.join("cgroup.procs"), std::process::id().to_string())?;
        Ok(CpuCap {
            group,
            home: root.join("cgroup.procs"),
            share,
        })
    }

    /// The share of one CPU the process has.
    pub fn share(&self) -> f64 {
        self.share
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        // Back to the root group, then the empty group can go.
        let _ = fs::write(&self.home, std::process::id().to_string());
        let _ = fs::remove_dir(&self.group);
    }
}

/// The directory whose groups take a CPU quota, and its cgroup version.
fn controller() -> Option<(PathBuf, Version)> {
    let v2 = Path::new("/sys/fs/cgroup");
    let has_cpu = |p: &Path| {
        fs::read_to_string(p)
            .map(|s| s.split_whitespace().any(|c| c == "cpu"))
            .unwrap_or(false)
    };
    if has_cpu(&v2.join("cgroup.subtree_control")) {
        return Some((v2.to_path_buf(), Version::V2));
    }
    let v1 = v2.join("cpu");
    v1.join("cpu.cfs_quota_us")
        .exists()
        .then_some((v1, Version::V1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_follows_lambda_s_memory_rule() {
        assert!((share_for_memory_mb(1769) - 1.0).abs() < 1e-12);
        assert!((share_for_memory_mb(128) - 0.0724).abs() < 1e-4);
        assert!((share_for_memory_mb(1024) - 0.5789).abs() < 1e-4);
    }
}
