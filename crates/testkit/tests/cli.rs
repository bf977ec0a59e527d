//! The built `raftmq` binary against an in-process cluster: what each command prints.

use std::time::Duration;

use raftmq_testkit::{cli_create_topic, run_cli, wait_until, Group};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_print_what_they_should() {
    let group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(Duration::from_secs(10)).await;
    let ns = group.namesrv_addr();

    // The group must have registered before a topic can be created in it.
    let created = wait_until("topic create succeeds", Duration::from_secs(10), || async {
        let (ok, out, _) = run_cli(&ns, &["topic", "create", "Orders", "--queues", "2"]).await;
        ok.then_some(out)
    })
    .await;
    assert!(created.contains("topic Orders set in broker-a"), "{created}");

    let (ok, out, _) = wait_until("route shows the topic", Duration::from_secs(10), || async {
        let r = run_cli(&ns, &["topic", "route", "Orders"]).await;
        r.0.then_some(r)
    })
    .await;
    assert!(ok);
    assert!(out.starts_with("GROUP"), "{out}");
    assert!(out.contains(&group.addr(master)), "the master's address: {out}");

    let (ok, out, _) = run_cli(&ns, &["topic", "list"]).await;
    assert!(ok && out.lines().any(|l| l == "Orders"), "{out}");

    let (ok, out, _) = run_cli(&ns, &["cluster", "list"]).await;
    assert!(ok, "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("broker-a")).count(), 3, "{out}");
    assert_eq!(out.lines().filter(|l| l.contains(" master ")).count(), 1, "{out}");

    for i in 0..3 {
        let body = format!("hello-{i}");
        let (ok, out, err) = run_cli(
            &ns,
            &[
                "send",
                "Orders",
                &body,
                "--tags",
                "TagA",
                "--keys",
                "k1",
                "--property",
                "a=b",
            ],
        )
        .await;
        assert!(ok && out.starts_with("sent "), "{out}{err}");
    }
    let (ok, out, err) = run_cli(&ns, &["--json", "send", "Orders", "json-body"]).await;
    assert!(ok, "{err}");
    let sent: serde_json::Value = serde_json::from_str(out.trim()).expect("send --json prints JSON");
    let (queue, offset) = (
        sent["queue_id"].as_u64().unwrap(),
        sent["queue_offset"].as_u64().unwrap(),
    );
    let id = sent["msg_id"].as_str().expect("an id").to_owned();
    let (ok, out, err) = run_cli(&ns, &["--json", "message", "get", "--id", &id]).await;
    assert!(ok, "{err}");
    let got: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(
        (got["body"].as_str(), got["queue_offset"].as_u64()),
        (Some("json-body"), Some(offset))
    );
    let unknown = format!("{}{:024X}", &id[..8], u64::MAX);
    let (ok, _, err) = run_cli(&ns, &["message", "get", "--id", &unknown]).await;
    assert!(!ok && err.contains("MESSAGE_NOT_FOUND"), "{err}");
    let (ok, _, err) = run_cli(&ns, &["message", "get", "--id", "not-an-id"]).await;
    assert!(!ok && err.contains("INVALID_ARGUMENT"), "{err}");

    let (ok, out, err) = run_cli(&ns, &["consume", "Orders", "--count", "4", "--idle-secs", "5"]).await;
    assert!(ok, "{err}");
    for body in ["hello-0", "hello-1", "hello-2", "json-body"] {
        assert!(out.contains(&format!("body={body}")), "{body} missing from:\n{out}");
    }
    let (ok, out, err) = run_cli(
        &ns,
        &[
            "consume",
            "Orders",
            "--group",
            "g1",
            "--count",
            "4",
            "--quiet",
            "--read",
            "prefer-slave",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "4");
    let (ok, out, _) = run_cli(&ns, &["--json", "group", "progress", "g1", "Orders"]).await;
    assert!(ok);
    let progress: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        progress
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["broker_offset"].as_u64().unwrap())
            .sum::<u64>(),
        4
    );
    // g1 consumed all four (the --count consumer committed on its way out): the trace says so.
    let (ok, out, err) = run_cli(&ns, &["--json", "message", "trace", "--id", &id]).await;
    assert!(ok, "{err}");
    let trace: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(
        (trace["topic"].as_str(), trace["queue_offset"].as_u64()),
        (Some("Orders"), Some(offset))
    );
    let groups = trace["consumer_groups"].as_array().expect("groups");
    assert!(
        groups
            .iter()
            .any(|g| g["consumer_group"] == "g1" && g["consumed"] == true),
        "{out}"
    );
    let (ok, out, err) = run_cli(&ns, &["message", "offsets", "Orders", "--at", "2000-01-01T00:00:00Z"]).await;
    assert!(ok && out.starts_with("GROUP"), "{out}{err}");
    assert_eq!(out.lines().count(), 3, "a header and two queues: {out}");
    for line in out.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[4], f[2], "everything is after 2000: the first offset: {line}");
    }
    let (ok, _, err) = run_cli(&ns, &["message", "offsets", "Orders", "--at", "yesterday-ish"]).await;
    assert!(!ok && err.contains("--at"), "{err}");

    let (ok, out, err) = run_cli(
        &ns,
        &[
            "message",
            "get",
            "Orders",
            "--group",
            "broker-a",
            "--queue",
            &queue.to_string(),
            "--offset",
            &offset.to_string(),
            "--read",
            "slave",
        ],
    )
    .await;
    assert!(ok && out.contains("body=json-body"), "{out}{err}");

    let (ok, out, _) = run_cli(&ns, &["group", "reset", "g1", "Orders", "--to", "earliest"]).await;
    assert!(ok && out.starts_with("GROUP"), "{out}");

    // Failures: non-zero exit, one line naming the code.
    let (ok, _, err) = run_cli(&ns, &["send", "NoSuchTopic", "x"]).await;
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("TOPIC_NOT_FOUND"), "{err}");
    let (ok, _, err) = run_cli(&ns, &["topic", "create", "bad topic"]).await;
    assert!(!ok && err.contains("INVALID_ARGUMENT"), "{err}");
    let (ok, _, err) = run_cli("127.0.0.1:1", &["topic", "list"]).await;
    assert!(!ok && err.starts_with("raftmq: UNAVAILABLE"), "{err}");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_sends_print_a_recall_handle_that_recalls_them() {
    let group = Group::start(3, |_| {}).await;
    group.wait_for_master(Duration::from_secs(10)).await;
    let ns = group.namesrv_addr();
    wait_until("topic create succeeds", Duration::from_secs(10), || async {
        run_cli(&ns, &["topic", "create", "Later", "--queues", "1"])
            .await
            .0
            .then_some(())
    })
    .await;
    let (ok, out, err) = run_cli(&ns, &["send", "Later", "in-a-minute", "--delay", "60s"]).await;
    assert!(ok && out.starts_with("scheduled "), "{out}{err}");
    assert!(
        out.contains("T") && out.contains("Z (recall handle "),
        "an RFC 3339 due time: {out}"
    );
    let (ok, out, err) = run_cli(
        &ns,
        &[
            "--json",
            "send",
            "Later",
            "at-new-year",
            "--deliver-at",
            "2099-01-01T00:00:00Z",
        ],
    )
    .await;
    assert!(!ok, "more than 30 days ahead is refused: {out}");
    assert!(err.contains("INVALID_ARGUMENT"), "{err}");
    let (ok, out, err) = run_cli(&ns, &["--json", "send", "Later", "soon", "--delay", "1h"]).await;
    assert!(ok, "{err}");
    let sent: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    let handle = sent["recall_handle"].as_str().expect("a recall handle").to_owned();
    assert!(sent["deliver_at_ms"].as_i64().unwrap() > raftmq_common::time::now_ms() + 3_000_000);

    let (ok, out, err) = run_cli(&ns, &["message", "recall", "Later", &handle]).await;
    assert!(ok && out.contains("recalled"), "{out}{err}");
    let (ok, _, err) = run_cli(&ns, &["message", "recall", "Later", &handle]).await;
    assert!(!ok && err.contains("MESSAGE_NOT_FOUND"), "a second recall: {err}");
    let (ok, _, err) = run_cli(&ns, &["send", "Later", "x", "--delay", "soonish"]).await;
    assert!(!ok && err.contains("not a duration"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_settings_and_dead_letters_from_the_command_line() {
    let group = Group::start(3, |_| {}).await;
    let master = group.wait_for_master(Duration::from_secs(10)).await;
    let ns = group.namesrv_addr();
    wait_until("topic create succeeds", Duration::from_secs(10), || async {
        run_cli(&ns, &["topic", "create", "Jobs", "--queues", "1"])
            .await
            .0
            .then_some(())
    })
    .await;
    let update = [
        "group",
        "update",
        "G",
        "--max-reconsume-times",
        "0",
        "--backoff",
        "1s,5s",
    ];
    let (ok, out, err) = run_cli(&ns, &update).await;
    assert!(ok && out.contains("updated G in broker-a"), "{out}{err}");
    let (ok, out, err) = run_cli(&ns, &["group", "settings", "G"]).await;
    assert!(ok && out.contains("1000ms 5000ms"), "{out}{err}");
    assert!(out.lines().any(|l| l.split_whitespace().nth(1) == Some("0")), "{out}");
    let (ok, _, err) = run_cli(&ns, &["group", "update", "G", "--backoff", "exp:1s,2"]).await;
    assert!(!ok && err.contains("exp:INITIAL,MAX,MULTIPLIER"), "{err}");
    let (ok, _, err) = run_cli(&ns, &["group", "update", "G", "--backoff", "0s"]).await;
    assert!(!ok && err.contains("INVALID_ARGUMENT"), "{err}");

    let (ok, out, err) = run_cli(&ns, &["send", "Jobs", "job-1"]).await;
    assert!(ok, "{out}{err}");
    // The group allows no retry: its first failure is a dead letter.
    let mut broker = group.client(master).await;
    let back = broker
        .send_back(raftmq_proto::SendBackRequest {
            consumer_group: "G".into(),
            topic: "Jobs".into(),
            queue_id: 0,
            offset: 0,
        })
        .await
        .expect("send back")
        .into_inner();
    assert!(back.dead_lettered && back.dlq_topic == "%DLQ%G", "{back:?}");

    let (ok, out, err) = wait_until("the dead letter listed", Duration::from_secs(10), || async {
        let r = run_cli(&ns, &["--json", "group", "dlq", "list", "G"]).await;
        (r.0 && r.1.contains("job-1")).then_some(r)
    })
    .await;
    assert!(ok, "{err}");
    let letters: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(letters.as_array().map(Vec::len), Some(1), "{out}");
    let id = letters[0]["msg_id"].as_str().unwrap().to_owned();
    let (ok, out, err) = run_cli(&ns, &["group", "dlq", "show", "G", &id]).await;
    assert!(
        ok && out.contains("job-1") && out.contains("DLQ_ORIGIN_TOPIC"),
        "{out}{err}"
    );
    let (ok, _, err) = run_cli(&ns, &["group", "dlq", "show", "G", "no-such-id"]).await;
    assert!(!ok && err.contains("no dead letter"), "{err}");
    let (ok, out, err) = run_cli(&ns, &["group", "dlq", "resend", "G", "--all"]).await;
    assert!(ok && out.contains("1 dead letter(s) resent"), "{out}{err}");
    let (ok, out, _) = run_cli(&ns, &["group", "dlq", "list", "G"]).await;
    assert!(ok && !out.contains("Jobs"), "resent, so no longer pending: {out}");
    let (ok, out, _) = run_cli(&ns, &["group", "dlq", "list", "G", "--all"]).await;
    assert!(ok && out.contains("Jobs"), "kept on the topic: {out}");
    let offsets = raftmq_testkit::queue_offsets(&mut broker, "Jobs", 0).await;
    assert_eq!(offsets.max_offset, 2, "the resent copy is a new message of Jobs");

    // A broadcasting consumer resumes from its own offsets file: one message a run.
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    for expected in ["offset=0", "offset=1"] {
        let args = [
            "consume",
            "Jobs",
            "--group",
            "bc",
            "--broadcast",
            "--offset-dir",
            dir_arg,
            "--count",
            "1",
            "--idle-secs",
            "3",
        ];
        let (ok, out, err) = run_cli(&ns, &args).await;
        assert!(
            ok && out.lines().count() == 1 && out.contains(expected),
            "{expected}: {out}{err}"
        );
    }
    assert!(dir.path().join("bc").join("Jobs.offsets").exists());
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_filters_and_key_queries_from_the_command_line() {
    let group = Group::start(3, |_| {}).await;
    group.wait_for_master(Duration::from_secs(10)).await;
    let ns = group.namesrv_addr();
    cli_create_topic(&ns, "Prices", 1).await;
    for i in 0..6 {
        let price = format!("price={i}");
        let key = format!("order-{}", i % 2);
        let body = format!("p{i}");
        let args = [
            "send",
            "Prices",
            &body,
            "--property",
            &price,
            "--keys",
            &key,
            "--tags",
            "quote",
        ];
        let (ok, _, err) = run_cli(&ns, &args).await;
        assert!(ok, "{err}");
    }

    // Plain pulls and a group consumer both filter on the broker.
    let (ok, out, err) = run_cli(
        &ns,
        &[
            "consume",
            "Prices",
            "--sql",
            "price > 3 AND TAGS = 'quote'",
            "--idle-secs",
            "2",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let bodies: Vec<&str> = out.lines().filter_map(|l| l.split("body=").nth(1)).collect();
    assert_eq!(bodies, ["p4", "p5"], "{out}");
    let args = [
        "consume",
        "Prices",
        "--group",
        "cheap",
        "--sql",
        "price BETWEEN 0 AND 1",
        "--idle-secs",
        "3",
    ];
    let (ok, out, err) = run_cli(&ns, &args).await;
    assert!(ok, "{err}");
    let bodies: Vec<&str> = out.lines().filter_map(|l| l.split("body=").nth(1)).collect();
    assert_eq!(bodies, ["p0", "p1"], "{out}");

    // A bad expression: a stable code, the place and the reason; nothing is read.
    let (ok, out, err) = run_cli(&ns, &["consume", "Prices", "--sql", "price > 'x'"]).await;
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("ILLEGAL_FILTER_EXPRESSION") && err.contains("line 1, column 9"),
        "{err}"
    );
    let (ok, _, err) = run_cli(&ns, &["consume", "Prices", "--sql", "price >", "--group", "g"]).await;
    assert!(!ok && err.contains("ILLEGAL_FILTER_EXPRESSION"), "{err}");

    // Messages by key, newest first; a limit says more match; bad queries get their code.
    let (ok, out, err) = run_cli(&ns, &["message", "query", "--topic", "Prices", "--key", "order-1"]).await;
    assert!(ok, "{err}");
    let bodies: Vec<&str> = out.lines().filter_map(|l| l.split("body=").nth(1)).collect();
    assert_eq!(bodies, ["p5", "p3", "p1"], "{out}");
    let args = [
        "message", "query", "--topic", "Prices", "--key", "order-0", "--max", "2",
    ];
    let (ok, out, err) = run_cli(&ns, &args).await;
    assert!(
        ok && out.lines().count() == 2 && err.contains("more messages match"),
        "{out}{err}"
    );
    let args = [
        "--json",
        "message",
        "query",
        "--topic",
        "Prices",
        "--key",
        "order-0",
        "--begin",
        "2000-01-01T00:00:00Z",
    ];
    let (ok, out, err) = run_cli(&ns, &args).await;
    assert!(ok, "{err}");
    let found: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(found["messages"].as_array().unwrap().len(), 3, "{out}");
    assert_eq!(found["truncated"], false);
    let args = [
        "message",
        "query",
        "--topic",
        "Prices",
        "--key",
        "order-0",
        "--end",
        "2000-01-01T00:00:00Z",
    ];
    let (ok, out, _) = run_cli(&ns, &args).await;
    assert!(ok && out.is_empty(), "nothing stored before 2000: {out}");
    let (ok, _, err) = run_cli(&ns, &["message", "query", "--topic", "Nope", "--key", "k"]).await;
    assert!(!ok && err.contains("TOPIC_NOT_FOUND"), "{err}");
    let (ok, _, err) = run_cli(&ns, &["message", "query", "--topic", "Prices", "--key", "a b"]).await;
    assert!(!ok && err.contains("INVALID_ARGUMENT"), "{err}");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transactions_are_listed_and_ended_from_the_command_line() {
    use raftmq_proto as pb;
    let group = Group::start(3, |c| c.transaction_check_after_ms = 600_000).await;
    let master = group.wait_for_master(Duration::from_secs(10)).await;
    let ns = group.namesrv_addr();
    cli_create_topic(&ns, "Orders", 1).await;
    let mut broker = group.client(master).await;
    let mut ids = Vec::new();
    for body in ["keep", "drop"] {
        let reply = broker
            .send_half(pb::SendHalfRequest {
                topic: "Orders".into(),
                queue_id: 0,
                producer_group: "P".into(),
                message: Some(pb::Message {
                    body: body.as_bytes().to_vec(),
                    keys: format!("k-{body}"),
                    ..Default::default()
                }),
            })
            .await
            .expect("half message")
            .into_inner();
        ids.push(reply.transaction_id);
    }

    let (ok, out, err) = run_cli(&ns, &["transaction", "list"]).await;
    assert!(ok, "{err}");
    for id in &ids {
        assert!(out.contains(id.as_str()), "{out}");
    }
    assert!(
        out.contains("k-keep") && out.contains(" P ") && out.ends_with("2 pending\n"),
        "{out}"
    );
    let (ok, out, _) = run_cli(&ns, &["--json", "transaction", "list"]).await;
    let listed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(ok && listed["pending"] == 2, "{out}");
    assert_eq!(listed["transactions"][0]["transaction_id"], ids[0].as_str());

    let (ok, out, err) = run_cli(&ns, &["transaction", "commit", &ids[0]]).await;
    assert!(ok && out.contains("stored as"), "{out}{err}");
    let (ok, out, _) = run_cli(&ns, &["transaction", "commit", &ids[0]]).await;
    assert!(ok && out.contains("committed before"), "{out}");
    let (ok, out, err) = run_cli(&ns, &["transaction", "rollback", &ids[1]]).await;
    assert!(ok && out.contains("rolled back"), "{out}{err}");
    let (ok, _, err) = run_cli(&ns, &["transaction", "commit", &ids[1]]).await;
    assert!(!ok && err.contains("TRANSACTION_ENDED"), "{err}");
    let (ok, _, err) = run_cli(&ns, &["transaction", "commit", "garbage"]).await;
    assert!(!ok && err.contains("INVALID_ARGUMENT"), "{err}");
    let (ok, out, _) = run_cli(&ns, &["transaction", "list"]).await;
    assert!(ok && out.ends_with("0 pending\n"), "{out}");
    let (ok, out, err) = run_cli(&ns, &["consume", "Orders", "--idle-secs", "1"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("keep") && !out.contains("drop"), "{out}");
    group.shutdown().await;
}
