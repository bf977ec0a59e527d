//! openraft's storage conformance suite over the real RocksDB store, on both append paths: a
//! follower's (synced before `append` returns) and a leader's (synced by the sync thread, which
//! reports the flush later).

use openraft::testing::{StoreBuilder, Suite};
use raftmq_store::{LogStore, StateMachine, StorageError, Store, StoreOptions, TypeConfig};
use tempfile::TempDir;

struct Builder {
    leading: bool,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) = Store::open(dir.path(), StoreOptions::default()).expect("open store");
        store.leading.set(self.leading);
        Ok((dir, store.log, store.state_machine))
    }
}

#[test]
fn openraft_storage_suite_on_a_follower() {
    Suite::test_all(Builder { leading: false }).expect("storage suite");
}

#[test]
fn openraft_storage_suite_on_the_leader() {
    Suite::test_all(Builder { leading: true }).expect("storage suite");
}
