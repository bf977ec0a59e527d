//! Broadcasting offsets, kept where RocketMQ keeps them (its `LocalFileOffsetStore`): on the
//! consumer's machine. Every member of a broadcasting group reads every queue, so its progress
//! is its own, not the group's: one file per group and topic, under a directory the user picks
//! (`PushConsumerBuilder::local_offset_dir`; by default `$RAFTMQ_OFFSET_DIR`, else
//! `$HOME/.raftmq_offsets`).
//!
//! The file is text, one queue a line (`broker-group queue-id offset`), and is replaced whole
//! on every save (written beside, synced, renamed over), so a crash leaves the last complete
//! save: a restarted consumer replays at most what it handled since, never skips.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::route::MessageQueue;

/// The offsets file of one consumer group and topic.
#[derive(Debug, Clone)]
pub(super) struct LocalOffsets {
    path: PathBuf,
}

/// Where offsets files go when the user names no directory.
pub fn default_offset_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RAFTMQ_OFFSET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".raftmq_offsets")
}

impl LocalOffsets {
    /// The file of `topic` for a group's member: `member` names it when the user did.
    pub(super) fn new(dir: &Path, consumer_group: &str, member: Option<&str>, topic: &str) -> LocalOffsets {
        let mut path = dir.join(consumer_group);
        if let Some(member) = member {
            // A client id is any string; keep it one path component.
            let mut member = member.replace(['/', '\\'], "_");
            if member.chars().all(|c| c == '.') {
                member.insert(0, '_');
            }
            path.push(member);
        }
        LocalOffsets {
            path: path.join(format!("{topic}.offsets")),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The saved offsets; none when nothing was saved yet. A damaged file is an error naming
    /// its line, not a silent start over.
    pub(super) fn load(&self) -> std::io::Result<BTreeMap<MessageQueue, u64>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e),
        };
        let mut out = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let bad = || {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} line {}: {line:?} is not `group queue offset`",
                        self.path.display(),
                        n + 1
                    ),
                )
            };
            let mut fields = line.split_whitespace();
            let (Some(group), Some(queue), Some(offset), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad());
            };
            let queue_id = queue.parse().map_err(|_| bad())?;
            let offset = offset.parse().map_err(|_| bad())?;
            out.insert(
                MessageQueue {
                    group: group.to_owned(),
                    queue_id,
                },
                offset,
            );
        }
        Ok(out)
    }

    /// Replaces the file with these offsets, atomically.
    pub(super) fn save(&self, offsets: &BTreeMap<MessageQueue, u64>) -> std::io::Result<()> {
        let dir = self.path.parent().expect("a file in a directory");
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("offsets.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "# raftmq broadcasting offsets: broker-group queue-id offset")?;
            for (q, offset) in offsets {
                writeln!(f, "{} {} {offset}", q.group, q.queue_id)?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_a_damaged_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("raftmq-offsets-{}", std::process::id()));
        let store = LocalOffsets::new(&dir, "G", Some("a/b"), "T");
        assert!(store.path().ends_with("G/a_b/T.offsets"), "{:?}", store.path());
        assert!(store.load().unwrap().is_empty(), "nothing saved yet");
        let q = |g: &str, id| MessageQueue {
            group: g.into(),
            queue_id: id,
        };
        let offsets = BTreeMap::from([(q("broker-a", 0), 12), (q("broker-b", 3), 7)]);
        store.save(&offsets).unwrap();
        assert_eq!(store.load().unwrap(), offsets);
        std::fs::write(store.path(), "broker-a 0 twelve\n").unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
