//! The chaos run's verdict: every replica read back queue by queue and held against what the
//! producers were told and what the consumer group got. Acknowledged and missing, stored twice,
//! out of producer order, reported failed but stored, never consumed, offsets gone backwards:
//! each is a problem, and any problem fails the run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::bail;
use raftmq_client::Client;
use raftmq_proto as pb;
use serde_json::json;

use super::cluster::deadline;
use super::load::{Outcome, Record};

/// Per fault kind: how often it was drawn, and the times to service during the fault and after
/// the heal.
#[derive(Default)]
pub struct Recovery {
    pub counts: BTreeMap<String, u32>,
    pub during: BTreeMap<String, Vec<Duration>>,
    pub after_heal: BTreeMap<String, Vec<Duration>>,
}

/// (queue, offset) → (body, store timestamp), as one replica holds the run's topic.
type Replica = BTreeMap<(u32, u64), (Vec<u8>, i64)>;

/// Reads every queue of the topic from every node.
pub async fn read_replicas(
    client: &Client,
    nodes: &BTreeMap<u64, String>,
    topic: &str,
) -> anyhow::Result<BTreeMap<u64, Replica>> {
    let mut replicas = BTreeMap::new();
    for (id, addr) in nodes {
        let mut content = BTreeMap::new();
        let mut b = client.broker(addr)?;
        for queue_id in 0..4 {
            let mut offset = 0;
            loop {
                let r = b
                    .pull(deadline(pb::PullRequest {
                        topic: topic.to_owned(),
                        queue_id,
                        offset,
                        max_messages: 1024,
                        ..Default::default()
                    }))
                    .await
                    .map_err(|s| anyhow::anyhow!("reading node {id}: {}", s.message()))?
                    .into_inner();
                if r.messages.is_empty() {
                    break;
                }
                for m in r.messages {
                    content.insert((queue_id, m.queue_offset), (m.body.to_vec(), m.store_timestamp_ms));
                }
                offset = r.next_offset;
            }
        }
        replicas.insert(*id, content);
    }
    Ok(replicas)
}

/// Checks the record against the replicas, prints the figures (a table, or one JSON object)
/// and fails the run on any problem.
pub fn judge(
    record: Record,
    replicas: &BTreeMap<u64, Replica>,
    recovery: &Recovery,
    seed: u64,
    rounds: u32,
    as_json: bool,
) -> anyhow::Result<()> {
    let outcomes = &record.outcomes;
    let acked = outcomes
        .values()
        .filter(|o| matches!(o, Outcome::Acked(..) | Outcome::Scheduled(_)))
        .count();
    let mut problems: Vec<String> = record.offsets_back.clone();
    let reference = replicas.values().next().cloned().unwrap_or_default();
    for (id, content) in replicas {
        if *content != reference {
            problems.push(format!(
                "node {id} differs from node {}",
                replicas.keys().next().unwrap()
            ));
        }
    }
    let mut lost = 0;
    for (body, outcome) in outcomes {
        if let Outcome::Acked(q, offset) = outcome {
            for (id, content) in replicas {
                if content.get(&(q.queue_id, *offset)).map(|(b, _)| b.as_slice()) != Some(body.as_bytes()) {
                    lost += 1;
                    problems.push(format!(
                        "acknowledged {body} at {q} offset {offset} missing on node {id}"
                    ));
                }
            }
        }
    }
    // A delayed message: once in every replica, never stored before it was due.
    let mut delayed = 0;
    for (body, outcome) in outcomes {
        if let Outcome::Scheduled(due) = outcome {
            delayed += 1;
            for (id, content) in replicas {
                let copies: Vec<i64> = content
                    .values()
                    .filter(|(b, _)| b.as_slice() == body.as_bytes())
                    .map(|(_, stored)| *stored)
                    .collect();
                match copies[..] {
                    [] => {
                        lost += 1;
                        problems.push(format!("delayed {body} (due {due}) missing on node {id}"));
                    }
                    [stored] if stored < *due => {
                        problems.push(format!("delayed {body} stored at {stored}, before its time {due}"))
                    }
                    [_] => {}
                    _ => problems.push(format!("delayed {body} stored {} times on node {id}", copies.len())),
                }
            }
        }
    }
    // A transaction: committed ones once in every replica, rolled-back ones never.
    let mut transactions = 0;
    for (body, outcome) in outcomes {
        let expected = match outcome {
            Outcome::TxCommitted => 1,
            Outcome::TxRolledBack => 0,
            _ => continue,
        };
        transactions += 1;
        for (id, content) in replicas {
            let copies = content
                .values()
                .filter(|(b, _)| b.as_slice() == body.as_bytes())
                .count();
            if copies != expected {
                if copies < expected {
                    lost += 1;
                }
                problems.push(format!(
                    "transaction {body} ({}) is stored {copies} times on node {id}",
                    if expected == 1 { "committed" } else { "rolled back" }
                ));
            }
        }
    }
    // An unknown half message ends as its checker says: never a rolled-back body.
    for (body, outcome) in outcomes {
        if matches!(outcome, Outcome::Unknown(_)) && body.starts_with("tr") {
            for (id, content) in replicas {
                if content.values().any(|(b, _)| b.as_slice() == body.as_bytes()) {
                    problems.push(format!(
                        "transaction {body} (rolled back by its checker) is stored on node {id}"
                    ));
                }
            }
        }
    }
    // Each body at most once; per producer and queue, offsets follow send order (delayed
    // messages, `d...`, are in the order they fell due instead).
    let mut seen: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let mut order: BTreeMap<(String, u32), Vec<(u64, u64)>> = BTreeMap::new();
    for ((queue, offset), (body, _)) in &reference {
        *seen.entry(body.clone()).or_default() += 1;
        let text = String::from_utf8_lossy(body);
        if let Some((p, seq)) = text.split_once('-').filter(|(p, _)| p.starts_with('p')) {
            order
                .entry((p.to_owned(), *queue))
                .or_default()
                .push((*offset, seq.parse().unwrap_or(0)));
        }
    }
    let duplicates = seen.values().filter(|n| **n > 1).count();
    for ((p, q), list) in &order {
        if !list.windows(2).all(|w| w[0].1 < w[1].1) {
            problems.push(format!("producer {p} is out of order in queue {q}"));
        }
    }
    for (body, outcome) in outcomes {
        if let Outcome::Failed(error) = outcome {
            if seen.contains_key(body.as_bytes()) {
                problems.push(format!("{body} was reported failed ({error}) but is stored"));
            }
        }
    }
    let unknown: Vec<&String> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Unknown(_)))
        .map(|(b, _)| b)
        .collect();
    let unknown_present = unknown.iter().filter(|b| seen.contains_key(b.as_bytes())).count();
    let consumed_set: BTreeSet<&[u8]> = record.consumed.iter().map(|(_, _, b)| b.as_slice()).collect();
    let not_consumed = outcomes
        .iter()
        .filter(|(b, o)| {
            matches!(o, Outcome::Acked(..) | Outcome::Scheduled(_)) && !consumed_set.contains(b.as_bytes())
        })
        .count();
    if not_consumed > 0 {
        problems.push(format!(
            "{not_consumed} acknowledged messages never reached the consumer group"
        ));
    }

    // The orderly group: within each queue, each member's deliveries never go backwards except
    // to start again from a committed offset, and across members the first deliveries of a
    // queue's messages come in offset order with nothing skipped.
    let mut first: BTreeMap<(String, u32), Vec<u64>> = BTreeMap::new();
    let mut seen_orderly = BTreeSet::new();
    for member in &record.orderly {
        for (q, offset, _) in member {
            if seen_orderly.insert((q.group.clone(), q.queue_id, *offset)) {
                first.entry((q.group.clone(), q.queue_id)).or_default().push(*offset);
            }
        }
    }
    for ((group, queue), offsets) in &first {
        let mut sorted = offsets.clone();
        sorted.sort_unstable();
        if !sorted.windows(2).all(|w| w[1] == w[0] + 1) {
            problems.push(format!("orderly group skipped offsets in {group}/{queue}"));
        }
    }
    for (i, member) in record.orderly.iter().enumerate() {
        let mut last: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for (q, offset, _) in member {
            let key = (q.group.clone(), q.queue_id);
            if let Some(prev) = last.insert(key.clone(), *offset) {
                if *offset <= prev && !is_restart(&record.orderly, &key, *offset) {
                    problems.push(format!(
                        "orderly member {i} went back in {}/{} from {prev} to {offset}",
                        key.0, key.1
                    ));
                }
            }
        }
    }
    let orderly_got: BTreeSet<&[u8]> = record.orderly.iter().flatten().map(|(_, _, b)| b.as_slice()).collect();
    let orderly_missing = outcomes
        .iter()
        .filter(|(b, o)| matches!(o, Outcome::Acked(..) | Outcome::Scheduled(_)) && !orderly_got.contains(b.as_bytes()))
        .count();
    if orderly_missing > 0 {
        problems.push(format!(
            "{orderly_missing} acknowledged messages never reached the orderly group"
        ));
    }

    let Recovery {
        counts,
        during,
        after_heal,
    } = recovery;
    if as_json {
        let rec: BTreeMap<&String, serde_json::Value> = counts
            .keys()
            .map(|f| {
                let d = figures(during.get(f));
                let h = figures(after_heal.get(f));
                (
                    f,
                    json!({"during_median_ms": d.map(|x| x.0), "during_worst_ms": d.map(|x| x.1), "after_heal_median_ms": h.map(|x| x.0), "after_heal_worst_ms": h.map(|x| x.1)}),
                )
            })
            .collect();
        println!(
            "{}",
            json!({"seed": seed, "rounds": rounds, "faults": counts, "acknowledged": acked, "delayed": delayed, "transactions": transactions, "lost": lost, "duplicates": duplicates, "unknown": unknown.len(), "unknown_stored": unknown_present, "liveness_failures": 0, "recovery": rec, "problems": problems})
        );
    } else {
        println!("seed {seed}, {rounds} rounds, liveness failures 0 (a run with one stops there)");
        println!(
            "{:<16} {:>5} {:>22} {:>22}",
            "FAULT", "COUNT", "DURING median / worst", "AFTER HEAL med / worst"
        );
        let cell = |f: Option<(f64, f64)>| match f {
            Some((m, w)) => format!("{m:>7.0} / {w:>7.0} ms"),
            None => "-".to_owned(),
        };
        for (fault, n) in counts {
            println!(
                "{fault:<16} {n:>5} {:>22} {:>22}",
                cell(figures(during.get(fault))),
                cell(figures(after_heal.get(fault)))
            );
        }
        println!(
            "acknowledged {acked} ({delayed} delayed, {transactions} transactions), lost {lost}, duplicates {duplicates}, unknown {} ({} stored, {} absent)",
            unknown.len(),
            unknown_present,
            unknown.len() - unknown_present
        );
        print_unknown_reasons(outcomes);
        for p in &problems {
            println!("problem: {p}");
        }
    }
    if lost > 0 || duplicates > 0 || !problems.is_empty() {
        bail!("chaos found {} problems (seed {seed})", problems.len() + duplicates);
    }
    Ok(())
}

/// (median, worst) of a list, in ms.
fn figures(v: Option<&Vec<Duration>>) -> Option<(f64, f64)> {
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    v.filter(|v| !v.is_empty()).map(|v| {
        let mut v = v.clone();
        v.sort();
        (ms(&v[v.len() / 2]), ms(&v[v.len() - 1]))
    })
}

/// Why outcomes were unknown, the commonest reasons first (numbers and addresses blanked so
/// that the same reason counts once).
fn print_unknown_reasons(outcomes: &BTreeMap<String, Outcome>) {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for o in outcomes.values() {
        if let Outcome::Unknown(e) = o {
            let shape: String = e.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
            *reasons.entry(shape).or_default() += 1;
        }
    }
    let mut reasons: Vec<_> = reasons.into_iter().collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (reason, n) in reasons.iter().take(3) {
        println!("unknown x{n}: {reason}");
    }
}

/// A member that lost a queue's lock and took it back starts again from the committed offset,
/// which may be before where it was: going back is allowed then, to messages handled before
/// (redeliveries), which a member's own list shows twice.
fn is_restart(members: &[Vec<super::load::Received>], key: &(String, u32), offset: u64) -> bool {
    members
        .iter()
        .flatten()
        .filter(|(q, o, _)| q.group == key.0 && q.queue_id == key.1 && *o == offset)
        .count()
        > 1
}
