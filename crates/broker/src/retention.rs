//! The node's disk guard and retention task.
//!
//! Sends are refused with `DISK_FULL` while the data directory's disk is at or above
//! `disk-full-percent`: nothing is acknowledged that could not be stored, and what is stored
//! stays readable. Retention deletes entries older than `retention-hours`, and above
//! `disk-clean-percent` the oldest ones early (never what a slave may still need).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::Raft;
use raftmq_common::shutdown::Stopping;
use raftmq_store::{disk, Retention, TypeConfig};

use raftmq_common::{Error, ErrorCode};

/// How stale a disk reading may be when a send asks.
const RECHECK: Duration = Duration::from_millis(100);
/// Entries deleted early per pass under disk pressure.
const PRESSURE_BATCH: u64 = 10_000;

/// Knows whether the disk is full, re-reading it at most every [`RECHECK`].
pub struct DiskGuard {
    dir: PathBuf,
    full_percent: f64,
    full: AtomicBool,
    checked: Mutex<Option<Instant>>,
}

impl DiskGuard {
    pub fn new(dir: PathBuf, full_percent: u8) -> Self {
        DiskGuard {
            dir,
            full_percent: full_percent as f64,
            full: AtomicBool::new(false),
            checked: Mutex::new(None),
        }
    }

    /// `DISK_FULL` when the disk is at or above the limit.
    pub fn check(&self) -> Result<(), Error> {
        let stale = {
            let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
            let stale = checked.is_none_or(|t| t.elapsed() >= RECHECK);
            if stale {
                *checked = Some(Instant::now());
            }
            stale
        };
        if stale {
            match disk::usage(&self.dir) {
                Ok(u) => {
                    let full = u.used_percent() >= self.full_percent;
                    if full != self.full.swap(full, Ordering::Relaxed) {
                        if full {
                            tracing::error!(used = format!("{:.1}%", u.used_percent()), "disk full: refusing sends");
                        } else {
                            tracing::info!(
                                used = format!("{:.1}%", u.used_percent()),
                                "disk below the limit again: taking sends"
                            );
                        }
                    }
                }
                Err(e) => tracing::warn!(dir = %self.dir.display(), "cannot read disk usage: {e}"),
            }
        }
        if self.full.load(Ordering::Relaxed) {
            return Err(ErrorCode::DiskFull.err(format!(
                "the disk holding {} is at or above {}% use; nothing was stored",
                self.dir.display(),
                self.full_percent
            )));
        }
        Ok(())
    }
}

/// Runs retention every `every` until `stop`.
///
/// Deleting entries frees no disk at once: the current snapshot's checkpoint still links the
/// table files they were in, until a newer snapshot replaces it. So retention asks Raft for a
/// new snapshot after a pass under disk pressure, and otherwise once it has deleted
/// `snapshot_after` entries since it last asked. (The new snapshot also lets Raft purge further,
/// so the next pass can delete more.)
#[allow(clippy::too_many_arguments)]
pub async fn run(
    retention: Retention,
    deleted: raftmq_metrics::prometheus_client::metrics::counter::Counter,
    raft: Raft<TypeConfig>,
    snapshot_after: u64,
    dir: PathBuf,
    hours: u64,
    clean_percent: u8,
    every: Duration,
    mut stop: Stopping,
) {
    let mut deleted_since_snapshot = 0u64;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait() => return,
        }
        let now_ms = raftmq_common::time::now_ms();
        let cutoff = now_ms - (hours as i64) * 3_600_000;
        let pressure = disk::usage(&dir)
            .map(|u| u.used_percent() >= clean_percent as f64)
            .unwrap_or(false);
        let force = if pressure { PRESSURE_BATCH } else { 0 };
        let r = retention.clone();
        match tokio::task::spawn_blocking(move || r.run(cutoff, force)).await {
            Ok(Ok(report)) if report.deleted_entries > 0 => {
                tracing::info!(deleted = report.deleted_entries, first = ?report.first_index, pressure, "retention pass");
                deleted_since_snapshot += report.deleted_entries;
                deleted.inc_by(report.deleted_entries);
                if pressure || deleted_since_snapshot >= snapshot_after {
                    deleted_since_snapshot = 0;
                    if let Err(e) = raft.trigger().snapshot().await {
                        tracing::warn!("cannot ask for a snapshot after retention: {e}");
                    }
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("retention failed: {e}"),
            Err(e) => tracing::error!("retention task failed: {e}"),
        }
    }
}
