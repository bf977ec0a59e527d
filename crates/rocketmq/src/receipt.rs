//! Receipt handles: what a delivered message is acknowledged or changed by.
//!
//! A handle names the broker group, the queue, the offset and the lease (the Raft index of the
//! entry that made the delivery). It is opaque to clients; a handle from an earlier delivery of
//! the same message parses fine but no longer matches the lease, and is refused as stale.

use std::fmt;

/// One delivery of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptHandle {
    pub broker: String,
    pub queue_id: u32,
    pub offset: u64,
    pub lease: u64,
}

const PREFIX: &str = "rmq1";

impl fmt::Display for ReceiptHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Broker names are [A-Za-z0-9_%|-]: never a '.'.
        write!(
            f,
            "{PREFIX}.{}.{}.{}.{}",
            self.queue_id, self.offset, self.lease, self.broker
        )
    }
}

impl ReceiptHandle {
    /// Parses a handle; `None` for anything this server did not make.
    pub fn parse(s: &str) -> Option<ReceiptHandle> {
        let mut parts = s.splitn(5, '.');
        if parts.next()? != PREFIX {
            return None;
        }
        let queue_id = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        let lease = parts.next()?.parse().ok()?;
        let broker = parts.next()?.to_owned();
        (!broker.is_empty() && !broker.contains('.')).then_some(ReceiptHandle {
            broker,
            queue_id,
            offset,
            lease,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_garbage_is_refused() {
        let h = ReceiptHandle {
            broker: "broker-a".into(),
            queue_id: 3,
            offset: 42,
            lease: 1234,
        };
        assert_eq!(ReceiptHandle::parse(&h.to_string()), Some(h));
        for bad in [
            "",
            "rmq1",
            "rmq1.1.2.3",
            "rmq1.x.2.3.b",
            "rmq2.1.2.3.b",
            "rmq1.1.2.3.",
            "rmq1.1.2.3.a.b",
        ] {
            assert_eq!(ReceiptHandle::parse(bad), None, "{bad:?}");
        }
    }
}
