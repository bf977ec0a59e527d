//! Messages by id: an id names its entry and position, so any replica finds the message's topic,
//! queue and offset from applied entries; ids of nothing stored in a queue find nothing.

use openraft::storage::RaftLogStorage;
use raftmq_store::reader::{message_id, parse_message_id};
use raftmq_store::types::Command;

mod common;
use common::*;

#[tokio::test]
async fn a_message_is_found_by_its_id_and_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let prefix = store.reader.id_prefix();
    let mut entries = vec![entry(1, vec![topic("T", 2), topic("U", 1)])];
    // Entry 2: two sends and a delayed message between them; entries 3 to 40, sends to T/1.
    entries.push(entry(
        2,
        vec![
            send("T", 1, &[("a", ""), ("b", "")]),
            Command::Schedule {
                topic: "U".into(),
                queue_id: 0,
                due_ms: 1_000_000,
                message: message("later", ""),
            },
            send("U", 0, &[("c", "")]),
        ],
    ));
    for i in 3..=40 {
        entries.push(entry(i, vec![send("T", 1, &[(&format!("m{i}"), "")])]));
    }
    commit(&mut store, entries).await;

    let get = |index, position| store.reader.get_by_id(&message_id(prefix, index, position)).unwrap();
    let b = get(2, 1).expect("b");
    assert_eq!(
        (b.topic.as_str(), b.queue_id, b.queue_offset, b.body.as_ref()),
        ("T", 1, 1, &b"b"[..])
    );
    assert_eq!(b.msg_id, message_id(prefix, 2, 1));
    let c = get(2, 3).expect("c, after the delayed message's position");
    assert_eq!((c.topic.as_str(), c.queue_offset, c.body.as_ref()), ("U", 0, &b"c"[..]));
    for i in 3..=40u64 {
        let m = get(i, 0).expect("every send");
        assert_eq!((m.queue_offset, m.body.to_vec()), (i - 1, format!("m{i}").into_bytes()));
    }
    assert!(get(2, 2).is_none(), "a delayed message before its time is in no queue");
    assert!(get(2, 4).is_none(), "past the entry's messages");
    assert!(get(1, 0).is_none(), "an entry without messages");
    assert!(get(41, 0).is_none(), "not applied");
    let other_group = message_id(prefix.wrapping_add(1), 2, 0);
    assert!(store.reader.get_by_id(&other_group).unwrap().is_none());
    for garbage in [
        "",
        "xyz",
        &message_id(prefix, 2, 0)[1..],
        &format!("{}G", &message_id(prefix, 2, 0)[1..]),
    ] {
        assert!(parse_message_id(garbage).is_none(), "{garbage:?}");
        assert!(store.reader.get_by_id(garbage).unwrap().is_none());
    }
    assert_eq!(parse_message_id(&message_id(7, 8, 9)), Some((7, 8, 9)));
}

/// A message of `body` with these keys.
fn keyed(body: &str, keys: &str) -> raftmq_store::types::MessageIn {
    raftmq_store::types::MessageIn {
        keys: keys.into(),
        ..message(body, "")
    }
}

fn send_keyed(topic: &str, queue: u32, messages: &[(&str, &str)]) -> Command {
    Command::Send {
        topic: topic.into(),
        queue_id: queue,
        messages: messages.iter().map(|(b, k)| keyed(b, k)).collect(),
    }
}

/// The bodies a key query returns, in its order.
fn bodies(q: &raftmq_store::KeyQuery) -> Vec<String> {
    q.messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

/// Every entry of the key index, raw.
fn index_entries(store: &raftmq_store::Store) -> usize {
    let db = &store.db;
    db.db
        .iterator_cf(db.cf(raftmq_store::db::CF_KEYS), rocksdb::IteratorMode::Start)
        .count()
}

#[tokio::test]
async fn messages_are_found_by_key_newest_first_and_leave_the_index_with_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    // Entry i is stored at 1000 + i ms.
    let mut entries = vec![entry(1, vec![topic("T", 2), topic("U", 1)])];
    entries.push(entry(
        2,
        vec![
            send_keyed("T", 0, &[("a", "order-1 shared"), ("b", "order-2")]),
            send_keyed("U", 0, &[("u", "order-1")]),
        ],
    ));
    entries.push(entry(
        3,
        vec![
            Command::Schedule {
                topic: "T".into(),
                queue_id: 1,
                due_ms: 1_000_000,
                message: keyed("later", "order-1"),
            },
            send_keyed("T", 1, &[("c", "shared shared order-1")]),
        ],
    ));
    for i in 4..=9u64 {
        entries.push(entry(
            i,
            vec![send_keyed("T", (i % 2) as u32, &[(&format!("m{i}"), "shared")])],
        ));
    }
    commit(&mut store, entries).await;

    let all = |key: &str| store.reader.query_key("T", key, i64::MIN, i64::MAX, 100).unwrap();
    assert_eq!(
        bodies(&all("order-1")),
        ["c", "a"],
        "newest first; the delayed one is in no queue yet"
    );
    assert_eq!(bodies(&all("order-2")), ["b"]);
    assert_eq!(
        bodies(&all("shared")),
        ["m9", "m8", "m7", "m6", "m5", "m4", "c", "a"],
        "a key repeated in one message finds it once"
    );
    assert!(all("order").messages.is_empty(), "keys match whole");
    assert!(all("nothing").messages.is_empty());
    let u = store.reader.query_key("U", "order-1", i64::MIN, i64::MAX, 10).unwrap();
    assert_eq!(bodies(&u), ["u"], "topics keep their keys apart");
    let c = &all("order-1").messages[0];
    assert_eq!(
        (c.topic.as_str(), c.queue_id, c.queue_offset, c.store_timestamp_ms),
        ("T", 1, 0, 1003)
    );

    // A time range (inclusive) and a limit.
    let range = store.reader.query_key("T", "shared", 1003, 1006, 100).unwrap();
    assert_eq!(bodies(&range), ["m6", "m5", "m4", "c"]);
    assert!(!range.truncated);
    let first2 = store.reader.query_key("T", "shared", i64::MIN, i64::MAX, 2).unwrap();
    assert_eq!(
        (bodies(&first2), first2.truncated),
        (vec!["m9".to_string(), "m8".into()], true)
    );

    // The index survives a restart.
    drop(store);
    let mut store = open(dir.path());
    let all =
        |store: &raftmq_store::Store, key: &str| store.reader.query_key("T", key, i64::MIN, i64::MAX, 100).unwrap();
    assert_eq!(bodies(&all(&store, "order-1")), ["c", "a"]);
    let before = index_entries(&store);

    // Retention deletes entries 1 to 3: their messages leave the index, entries and all.
    store.log.purge(log_id(9)).await.unwrap();
    let report = store.retention.run(1004, 0).unwrap();
    assert_eq!(report.deleted_entries, 3);
    assert!(all(&store, "order-1").messages.is_empty());
    assert!(all(&store, "order-2").messages.is_empty());
    assert_eq!(bodies(&all(&store, "shared")), ["m9", "m8", "m7", "m6", "m5", "m4"]);
    let u = store.reader.query_key("U", "order-1", i64::MIN, i64::MAX, 10).unwrap();
    assert!(u.messages.is_empty());
    // a: 2 keys, b: 1, u: 1, c: 2 (the delayed one was never indexed).
    assert_eq!(index_entries(&store), before - 6);

    // Deleting a topic deletes its index.
    commit(
        &mut store,
        vec![entry(10, vec![Command::DeleteTopic { name: "T".into() }])],
    )
    .await;
    assert_eq!(index_entries(&store), 0);
}

#[tokio::test]
async fn a_slave_that_installs_a_snapshot_finds_messages_by_key() {
    let (leader_dir, slave_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = open(leader_dir.path());
    commit(
        &mut leader,
        vec![
            entry(1, vec![topic("T", 1)]),
            entry(2, vec![send_keyed("T", 0, &[("a", "k"), ("b", "k other")])]),
        ],
    )
    .await;
    let snapshot = build_snapshot(&mut leader).await;
    let mut slave = open(slave_dir.path());
    transfer(snapshot, &mut slave).await;
    let q = slave.reader.query_key("T", "k", i64::MIN, i64::MAX, 10).unwrap();
    assert_eq!(bodies(&q), ["b", "a"]);
}

/// What the key index costs on disk per indexed key, measured on flushed tables (printed for
/// docs/benchmarks.md; the bound only catches a layout gone wrong).
#[tokio::test]
async fn the_key_index_costs_tens_of_bytes_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    commit(&mut store, vec![entry(1, vec![topic("Orders", 4)])]).await;
    let per_entry = 100u64;
    let entries = 200u64;
    let mut batch = Vec::new();
    for i in 0..entries {
        let messages: Vec<(String, String)> = (0..per_entry)
            .map(|j| {
                let n = i * per_entry + j;
                (format!("body-{n}"), format!("order-{n:08}"))
            })
            .collect();
        let refs: Vec<(&str, &str)> = messages.iter().map(|(b, k)| (b.as_str(), k.as_str())).collect();
        batch.push(entry(2 + i, vec![send_keyed("Orders", (i % 4) as u32, &refs)]));
    }
    commit(&mut store, batch).await;
    let db = &store.db;
    let cf = db.cf(raftmq_store::db::CF_KEYS);
    db.db.flush_cf(cf).unwrap();
    db.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
    let bytes = db
        .db
        .property_int_value_cf(cf, "rocksdb.total-sst-files-size")
        .unwrap()
        .unwrap();
    let keys = entries * per_entry;
    let per_key = bytes as f64 / keys as f64;
    println!(
        "key index: {keys} keys (14-byte keys on topic Orders), {bytes} bytes of tables, {per_key:.1} bytes a key"
    );
    assert!(per_key > 5.0 && per_key < 80.0, "{per_key} bytes a key");
    let q = store
        .reader
        .query_key("Orders", "order-00012345", i64::MIN, i64::MAX, 10)
        .unwrap();
    assert_eq!(bodies(&q), ["body-12345"]);
}
