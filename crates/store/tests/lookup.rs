//! Messages by id: an id names its entry and position, so any replica finds the message's topic,
//! queue and offset from applied entries; ids of nothing stored in a queue find nothing.

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
        (b.topic.as_str(), b.queue_id, b.queue_offset, b.body.as_slice()),
        ("T", 1, 1, &b"b"[..])
    );
    assert_eq!(b.msg_id, message_id(prefix, 2, 1));
    let c = get(2, 3).expect("c, after the delayed message's position");
    assert_eq!(
        (c.topic.as_str(), c.queue_offset, c.body.as_slice()),
        ("U", 0, &b"c"[..])
    );
    for i in 3..=40u64 {
        let m = get(i, 0).expect("every send");
        assert_eq!((m.queue_offset, m.body), (i - 1, format!("m{i}").into_bytes()));
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
