//! Disk faults of the chaos suite: a node's disk filling up, and a power loss's torn WAL tail.
//!
//! - **disk-full**: the node's data directory is moved onto a small tmpfs of its own (once per
//!   run, the first time the node is picked), then filled to the last byte and freed again. A
//!   master refuses sends with DISK_FULL; a node whose write fails stops loudly and is started
//!   again once space is back. Needs permission to mount (root).
//! - **torn-tail**: the node is killed and its newest WAL is cut back to somewhere between what
//!   it had synced (the `SYNCED-WAL` mark brokers keep with `fault-injection = true`) and its
//!   end, as a power loss may leave it. Never further: losing synced data is not a fault any
//!   replicated log survives.
//!
//! Everything here works on the cluster script's run directory and must never touch a node that
//! is not part of the run; [`DiskFaults::restore`] puts every moved data directory back on the
//! real disk, so `scripts/cluster.sh down --purge` works afterwards.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::ops::script;

/// Room a node's tmpfs has beyond its data when it is set up.
const TMPFS_HEADROOM: u64 = 256 << 20;

pub struct DiskFaults {
    /// The cluster script's run directory (`RAFTMQ_HOME`).
    run: PathBuf,
    script: PathBuf,
    /// Nodes whose data directory is on a tmpfs of its own.
    mounted: BTreeSet<String>,
}

fn run_cmd(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    // `cp -a` keeps what RocksDB cares about and is on every machine the script runs on.
    run_cmd(
        "cp",
        &[
            "-a",
            &format!("{}/.", from.display()),
            to.to_str().context("utf-8 path")?,
        ],
    )?;
    // A node's data must be durable where it lands, as it was where it came from: unsynced, a
    // power loss right after the move emptied the copies (the power-loss fault found it, on a
    // node moved back from its small disk).
    sync_tree(to)
}

/// Syncs every file and directory under `dir`, `dir` included.
fn sync_tree(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            sync_tree(&path)?;
        } else if path.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", path.display()))?;
        }
    }
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

impl DiskFaults {
    /// `script` is the cluster script; the run directory is `RAFTMQ_HOME` or the script's
    /// default (`.cluster` in its repository).
    pub fn new(script_path: &Path) -> DiskFaults {
        let run = std::env::var_os("RAFTMQ_HOME").map(PathBuf::from).unwrap_or_else(|| {
            script_path
                .canonicalize()
                .ok()
                .and_then(|p| p.parent()?.parent().map(|r| r.join(".cluster")))
                .unwrap_or_else(|| PathBuf::from(".cluster"))
        });
        DiskFaults {
            run,
            script: script_path.to_path_buf(),
            mounted: BTreeSet::new(),
        }
    }

    /// The cluster script's run directory.
    pub fn run(&self) -> &Path {
        &self.run
    }

    fn data_dir(&self, node: &str) -> PathBuf {
        self.run.join("data").join(node)
    }

    /// Deletes a stopped node's data, as a lost disk would (a small disk of its own is
    /// unmounted first).
    pub fn wipe(&mut self, node: &str) -> anyhow::Result<()> {
        if self.mounted.remove(node) {
            let data = self.data_dir(node);
            let _ = run_cmd("umount", &[data.to_str().unwrap_or_default()]);
            let _ = std::fs::remove_dir_all(self.run.join("data").join(format!("{node}.on-disk")));
        }
        let data = self.data_dir(node);
        if data.exists() {
            std::fs::remove_dir_all(&data).with_context(|| format!("deleting {}", data.display()))?;
        }
        Ok(())
    }

    /// Moves a node's data onto a tmpfs of its own sized to its data plus some room.
    fn mount_small_disk(&mut self, node: &str) -> anyhow::Result<()> {
        if self.mounted.contains(node) {
            return Ok(());
        }
        let data = self.data_dir(node);
        let aside = self.run.join("data").join(format!("{node}.on-disk"));
        script(&self.script, &["stop", node])?;
        let size = dir_size(&data) + TMPFS_HEADROOM;
        std::fs::rename(&data, &aside).with_context(|| format!("moving {} aside", data.display()))?;
        std::fs::create_dir_all(&data)?;
        let mounted = run_cmd(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                data.to_str().context("utf-8 path")?,
            ],
        );
        if let Err(e) = mounted {
            std::fs::remove_dir(&data).ok();
            std::fs::rename(&aside, &data).ok();
            script(&self.script, &["start", node])?;
            bail!("the disk-full fault needs to mount a tmpfs (run as root, or leave it out with --faults): {e}");
        }
        self.mounted.insert(node.to_owned());
        copy_dir(&aside, &data)?;
        std::fs::remove_dir_all(&aside)?;
        script(&self.script, &["start", node])?;
        Ok(())
    }

    /// Gives every node on a tmpfs its headroom again, over what its data takes now. The data
    /// grows between the rounds that fill a disk (messages, and since snapshots are installed,
    /// a received snapshot beside the store it replaces): left at its first size, a tmpfs
    /// filled up in a round that was not a disk fault (a 150-round run, round 122).
    pub fn keep_headroom(&self) -> anyhow::Result<()> {
        for node in &self.mounted {
            let data = self.data_dir(node);
            // Hard links count twice here: the size only errs on the large side.
            let size = dir_size(&data) + TMPFS_HEADROOM;
            run_cmd(
                "mount",
                &[
                    "-o",
                    &format!("remount,size={size}"),
                    data.to_str().context("utf-8 path")?,
                ],
            )?;
        }
        Ok(())
    }

    /// Fills a node's disk to the last byte, holds it for `hold`, frees it, and starts the node
    /// again if it stopped. Returns what happened, for the log.
    pub async fn disk_full(&mut self, node: &str, hold: std::time::Duration) -> anyhow::Result<String> {
        self.mount_small_disk(node)?;
        let filler = self.data_dir(node).join("chaos-filler");
        let mut file = std::fs::File::create(&filler).context("creating the filler")?;
        let chunk = vec![0u8; 1 << 20];
        let mut filled = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => filled += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e).context("filling the disk"),
            }
        }
        drop(file);
        tokio::time::sleep(hold).await;
        std::fs::remove_file(&filler).context("freeing the disk")?;
        // A node whose write failed stopped itself; `start` is a no-op for a running one.
        script(&self.script, &["start", node])?;
        Ok(format!("{node}: disk filled with {} MiB, then freed", filled >> 20))
    }

    /// Kills a node, cuts its WAL's unsynced tail at a random point, and starts it again.
    pub fn torn_tail(&self, node: &str, random: u64) -> anyhow::Result<String> {
        script(&self.script, &["kill", node])?;
        let db = self.data_dir(node).join("db");
        let mark = std::fs::read_to_string(db.join(raftmq_common::SYNCED_WAL_MARK)).with_context(|| {
            format!(
                "{node} keeps no synced-WAL mark in {}: the torn-tail fault needs brokers with fault-injection = true",
                db.display()
            )
        })?;
        let (file, synced) = mark
            .split_once(' ')
            .and_then(|(f, n)| Some((f.to_owned(), n.trim().parse::<u64>().ok()?)))
            .with_context(|| format!("bad synced-WAL mark {mark:?}"))?;
        let number = |name: &str| name.strip_suffix(".log").and_then(|n| n.parse::<u64>().ok());
        let marked = number(&file).context("bad WAL name in the mark")?;
        let mut cut = 0u64;
        let mut wals: Vec<(u64, PathBuf)> = std::fs::read_dir(&db)?
            .flatten()
            .filter_map(|e| Some((number(&e.file_name().into_string().ok()?)?, e.path())))
            .filter(|(n, _)| *n >= marked)
            .collect();
        wals.sort();
        // Only the newest WAL file is cut. RocksDB syncs a WAL file it closed before a flush
        // that needs it completes, and the broker's mark cannot follow such syncs: a node
        // killed in the middle of a checkpoint's flush left the mark on a closed file whose
        // tail was already in a table file (found by the chaos suite: 'SST file is ahead of
        // WALs').
        if let Some(newest) = wals.pop() {
            wals = vec![newest];
        }
        for (n, path) in wals {
            let len = std::fs::metadata(&path)?.len();
            // The marked file keeps what was synced; a newer one was written after it.
            let keep_at_least = if n == marked { synced.min(len) } else { 0 };
            let unsynced = len - keep_at_least;
            if unsynced == 0 {
                continue;
            }
            let keep = keep_at_least + random % (unsynced + 1);
            std::fs::OpenOptions::new().write(true).open(&path)?.set_len(keep)?;
            cut += len - keep;
        }
        script(&self.script, &["start", node])?;
        Ok(format!("{node}: {cut} unsynced WAL bytes cut"))
    }

    /// Moves every node's data back onto the real disk (stopping and starting it).
    pub fn restore(&mut self) -> anyhow::Result<()> {
        for node in std::mem::take(&mut self.mounted) {
            let data = self.data_dir(&node);
            let aside = self.run.join("data").join(format!("{node}.on-disk"));
            script(&self.script, &["stop", &node])?;
            std::fs::create_dir_all(&aside)?;
            copy_dir(&data, &aside)?;
            run_cmd("umount", &[data.to_str().context("utf-8 path")?])?;
            std::fs::remove_dir(&data)?;
            std::fs::rename(&aside, &data)?;
            script(&self.script, &["start", &node])?;
        }
        Ok(())
    }
}

impl Drop for DiskFaults {
    fn drop(&mut self) {
        if !self.mounted.is_empty() {
            if let Err(e) = self.restore() {
                eprintln!("chaos: could not move data back from tmpfs: {e:#}");
            }
        }
    }
}
