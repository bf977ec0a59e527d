//! Delayed and timed messages: when a message asks to be delivered, how it is recalled, and the
//! master's loop that delivers due ones. Storage and the exactly-once rule are the store's
//! (`raftmq_store::timers`): a timer is delivered through a Raft entry that applies only while
//! it is pending, so a failover between the due time and the delivery neither loses a message
//! nor delivers it twice, and a new master picks up every pending timer from the replicated
//! state. A group stopped over a due time delivers at once when its master is back.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_common::shutdown::Stopping;
use raftmq_common::time::now_ms;
use raftmq_common::{Error, ErrorCode};
use raftmq_store::timers::{Timer, MAX_DELAY_MS};
use raftmq_store::types::{Command, CommandResult, MessageIn};

use crate::state::BrokerState;

/// The delivery time, ms since the epoch (RocketMQ's timer property). A delayed message carries
/// it when delivered, so its consumers see when it was due.
pub const PROP_DELIVER_MS: &str = "TIMER_DELIVER_MS";
/// A delay in ms from the send (RocketMQ's).
pub const PROP_DELAY_MS: &str = "TIMER_DELAY_MS";
/// A delay in seconds from the send (RocketMQ's).
pub const PROP_DELAY_SEC: &str = "TIMER_DELAY_SEC";
/// A delay level, 1 to 18 (RocketMQ 4's `DELAY`).
pub const PROP_DELAY_LEVEL: &str = "DELAY";

/// RocketMQ's delay levels 1 to 18: `1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h`.
pub const DELAY_LEVELS_MS: [i64; 18] = [
    1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000, 480_000, 540_000,
    600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
];

/// How often the master looks for due timers: the delivery precision (100 ms promised).
const TICK: Duration = Duration::from_millis(50);
/// Most deliveries the master has proposed and not yet seen committed.
const MAX_IN_FLIGHT: usize = 8192;

/// The delivery time a message asks for, read from its properties, and the properties with it
/// written as [`PROP_DELIVER_MS`] alone. `None` for a message to deliver now (no delay, or a
/// time already past).
pub fn due_ms(message: &MessageIn, now_ms: i64) -> Result<Option<i64>, Error> {
    let get = |name: &str| {
        message
            .properties
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let number =
        |name: &str, v: &str| -> Result<i64, Error> {
            v.trim().parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ErrorCode::InvalidArgument.err(format!("property {name}: {v:?} is not a whole number >= 0"))
            })
        };
    let due = if let Some(v) = get(PROP_DELIVER_MS) {
        number(PROP_DELIVER_MS, v)?
    } else if let Some(v) = get(PROP_DELAY_MS) {
        now_ms.saturating_add(number(PROP_DELAY_MS, v)?)
    } else if let Some(v) = get(PROP_DELAY_SEC) {
        now_ms.saturating_add(number(PROP_DELAY_SEC, v)?.saturating_mul(1000))
    } else if let Some(v) = get(PROP_DELAY_LEVEL) {
        // Level 0 is no delay; past the last level is the last level, as in RocketMQ.
        match number(PROP_DELAY_LEVEL, v)? {
            0 => return Ok(None),
            level => now_ms + DELAY_LEVELS_MS[(level.min(18) - 1) as usize],
        }
    } else {
        return Ok(None);
    };
    if due <= now_ms {
        return Ok(None);
    }
    if due - now_ms > MAX_DELAY_MS {
        return Err(ErrorCode::InvalidArgument.err(format!(
            "the delivery time is {} s ahead; the limit is {} days",
            (due - now_ms) / 1000,
            MAX_DELAY_MS / 86_400_000
        )));
    }
    Ok(Some(due))
}

/// The message as the timer keeps it: the delay properties replaced by the due time.
pub fn scheduled(mut message: MessageIn, due_ms: i64) -> MessageIn {
    message
        .properties
        .retain(|(k, _)| ![PROP_DELIVER_MS, PROP_DELAY_MS, PROP_DELAY_SEC, PROP_DELAY_LEVEL].contains(&k.as_str()));
    message
        .properties
        .push((PROP_DELIVER_MS.to_owned(), due_ms.to_string()));
    message
}

/// The recall handle a producer gets: the group holding the timer, then the timer.
pub fn recall_handle(group: &str, timer: &Timer) -> String {
    format!("{group}@{}", timer.handle())
}

/// Cancels a delayed message that is not due yet. Answers `ALREADY_DELIVERED` for one delivered
/// already, `MESSAGE_NOT_FOUND` for a handle that names nothing pending, `INVALID_ARGUMENT` for
/// a handle that is not one or belongs to another group. Returns the message's id.
pub async fn recall(state: &BrokerState, handle: &str) -> Result<String, Error> {
    let timer = Timer::parse_handle(super::own_handle(state, "recall_handle", handle)?).ok_or_else(|| {
        ErrorCode::InvalidArgument.err(format!("field `recall_handle`: {handle:?} is not a recall handle"))
    })?;
    state.require_master()?;
    state.commit(Command::Recall { timer }, 64).await?;
    Ok(raftmq_store::reader::message_id(
        state.reader.id_prefix(),
        timer.log_index,
        timer.position,
    ))
}

/// The master's delivery loop: every [`TICK`], the timers due now are proposed for delivery,
/// each once while its proposal is in flight. Runs on every node and works only while the node
/// is master; a proposal lost in a failover is proposed again by the next master, and apply
/// stores it once.
pub async fn run(state: Arc<BrokerState>, mut stop: Stopping) {
    let in_flight: Arc<Mutex<HashSet<Timer>>> = Arc::default();
    // Where the last scan stopped: the next goes on from there, so a burst of due timers is
    // proposed as fast as room frees, instead of rereading the ones in flight; an empty scan
    // starts over from the first pending timer (a proposal that failed is found again then).
    let mut cursor: Option<Timer> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.wait() => return,
        }
        if !state.is_master() {
            cursor = None;
            continue;
        }
        let room = MAX_IN_FLIGHT.saturating_sub(in_flight.lock().unwrap_or_else(|p| p.into_inner()).len());
        if room == 0 {
            continue;
        }
        let due = match state.reader.due_timers(cursor.as_ref(), now_ms(), room) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!("cannot read the pending timers: {e}");
                continue;
            }
        };
        cursor = due.last().map(|d| d.timer);
        for d in due {
            if !in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(d.timer) {
                continue;
            }
            let (state, in_flight) = (state.clone(), in_flight.clone());
            tokio::spawn(async move {
                let bytes = d.target.message.size();
                let command = Command::Deliver {
                    timer: d.timer,
                    topic: d.target.topic,
                    queue_id: d.target.queue_id,
                    message: d.target.message,
                };
                match state.commit(command, bytes).await {
                    Ok((_, CommandResult::Sent { .. } | CommandResult::Done)) => {}
                    Ok((_, other)) => {
                        tracing::warn!(timer = %d.timer.handle(), "a delayed message was dropped: {other:?}")
                    }
                    Err(e) => tracing::debug!(timer = %d.timer.handle(), "delivery not committed, retried: {e}"),
                }
                in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&d.timer);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(props: &[(&str, &str)]) -> MessageIn {
        MessageIn {
            tags: String::new(),
            keys: String::new(),
            properties: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: bytes::Bytes::from_static(b"x"),
            born_timestamp_ms: 0,
            body_crc: 0,
        }
    }

    #[test]
    fn every_way_to_ask_for_a_delay_gives_a_due_time() {
        let now = 1_000_000;
        let due = |props: &[(&str, &str)]| due_ms(&message(props), now).unwrap();
        assert_eq!(due(&[]), None);
        assert_eq!(due(&[(PROP_DELIVER_MS, "1005000")]), Some(1_005_000));
        assert_eq!(due(&[(PROP_DELIVER_MS, "999999")]), None, "a time past is now");
        assert_eq!(due(&[(PROP_DELAY_MS, "250")]), Some(now + 250));
        assert_eq!(due(&[(PROP_DELAY_SEC, "3")]), Some(now + 3_000));
        assert_eq!(due(&[(PROP_DELAY_LEVEL, "0")]), None);
        assert_eq!(due(&[(PROP_DELAY_LEVEL, "1")]), Some(now + 1_000));
        assert_eq!(due(&[(PROP_DELAY_LEVEL, "18")]), Some(now + 7_200_000));
        assert_eq!(due(&[(PROP_DELAY_LEVEL, "99")]), Some(now + 7_200_000));
    }

    #[test]
    fn a_bad_or_too_distant_delay_is_refused() {
        let now = 1_000_000;
        for props in [
            [(PROP_DELAY_MS, "soon")],
            [(PROP_DELAY_SEC, "-1")],
            [(PROP_DELAY_LEVEL, "1.5")],
            [(PROP_DELAY_MS, "2592000001")],
        ] {
            let err = due_ms(&message(&props), now).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{props:?}");
        }
    }

    #[test]
    fn the_timer_keeps_only_the_due_time() {
        let m = scheduled(message(&[(PROP_DELAY_LEVEL, "3"), ("k", "v")]), 42);
        assert_eq!(
            m.properties,
            vec![
                ("k".to_owned(), "v".to_owned()),
                (PROP_DELIVER_MS.to_owned(), "42".to_owned())
            ]
        );
    }
}
