//! The telemetry handshake: a client sends its settings, the server answers the effective ones.
//!
//! Without an answer the official clients do not start (they wait for it), and without sane
//! values they misbehave: a push consumer busy-loops on a zero long-polling timeout, a producer
//! stops retrying without a backoff policy.

use std::time::Duration;

use raftmq_proto::rocketmq as v2;

use crate::proto_duration;

/// Largest message body accepted (the broker's default message size limit).
pub const MAX_BODY_SIZE: i32 = 4 << 20;
/// How long a receive waits for messages when the client asks the server to decide.
pub const LONG_POLLING_TIMEOUT: Duration = Duration::from_secs(20);
/// Messages per receive a push consumer asks for.
pub const RECEIVE_BATCH_SIZE: i32 = 32;
/// Attempts of one send (the first and two retries), as RocketMQ's proxy says.
pub const SEND_ATTEMPTS: i32 = 3;

/// RocketMQ's retry delays: 10s 30s 1m 2m 3m ... 2h.
const REDELIVERY_DELAYS: [u64; 16] = [
    10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200,
];

/// When a consumer group's failed messages come again, as its consumers are told.
#[derive(Debug, Clone, PartialEq)]
pub enum Redelivery {
    /// The n-th retry after the n-th delay (past the end, the last).
    Delays(Vec<Duration>),
    /// `initial * multiplier^(n-1)`, at most `max`.
    Exponential {
        initial: Duration,
        max: Duration,
        multiplier: f32,
    },
}

/// A consumer group's retry policy: at most `max_attempts` deliveries of a message, after
/// `redelivery` delays.
pub fn consumer_retry_policy(max_attempts: u32, redelivery: Redelivery) -> v2::RetryPolicy {
    let strategy = match redelivery {
        Redelivery::Delays(delays) => v2::retry_policy::Strategy::CustomizedBackoff(v2::CustomizedBackoff {
            next: delays.into_iter().map(proto_duration).collect(),
        }),
        Redelivery::Exponential {
            initial,
            max,
            multiplier,
        } => v2::retry_policy::Strategy::ExponentialBackoff(v2::ExponentialBackoff {
            initial: Some(proto_duration(initial)),
            max: Some(proto_duration(max)),
            multiplier,
        }),
    };
    v2::RetryPolicy {
        max_attempts: max_attempts.min(i32::MAX as u32) as i32,
        strategy: Some(strategy),
    }
}

/// RocketMQ's default: 16 retries after 10s 30s 1m ... 2h.
pub fn default_consumer_retry_policy() -> v2::RetryPolicy {
    consumer_retry_policy(
        crate::MAX_DELIVERY_ATTEMPTS,
        Redelivery::Delays(REDELIVERY_DELAYS.iter().map(|s| Duration::from_secs(*s)).collect()),
    )
}

/// The settings the server answers to the client's `settings`; consumers are told their
/// group's retry policy (`consumer_retry`: how many deliveries at most, after which delays).
pub fn effective(client: &v2::Settings, consumer_retry: v2::RetryPolicy, fifo: bool) -> v2::Settings {
    let mut s = v2::Settings {
        client_type: client.client_type,
        access_point: client.access_point.clone(),
        request_timeout: client.request_timeout,
        user_agent: client.user_agent.clone(),
        metric: Some(v2::Metric {
            on: false,
            endpoints: None,
        }),
        ..Default::default()
    };
    match &client.pub_sub {
        Some(v2::settings::PubSub::Publishing(p)) => {
            s.backoff_policy = Some(v2::RetryPolicy {
                max_attempts: SEND_ATTEMPTS,
                strategy: Some(v2::retry_policy::Strategy::ExponentialBackoff(v2::ExponentialBackoff {
                    initial: Some(proto_duration(Duration::from_millis(10))),
                    max: Some(proto_duration(Duration::from_secs(1))),
                    multiplier: 2.0,
                })),
            });
            s.pub_sub = Some(v2::settings::PubSub::Publishing(v2::Publishing {
                topics: p.topics.clone(),
                max_body_size: MAX_BODY_SIZE,
                validate_message_type: true,
            }));
        }
        Some(v2::settings::PubSub::Subscription(sub)) => {
            s.backoff_policy = Some(consumer_retry);
            let long_polling = sub
                .long_polling_timeout
                .as_ref()
                .map(crate::duration)
                .filter(|d| !d.is_zero())
                .unwrap_or(LONG_POLLING_TIMEOUT);
            s.pub_sub = Some(v2::settings::PubSub::Subscription(v2::Subscription {
                group: sub.group.clone(),
                subscriptions: sub.subscriptions.clone(),
                // A FIFO group (`raftmq group update GROUP --fifo true`) gets a queue's next
                // message only once the earlier ones were acknowledged.
                fifo: Some(fifo),
                receive_batch_size: Some(RECEIVE_BATCH_SIZE),
                long_polling_timeout: Some(proto_duration(long_polling)),
                lite_subscription_quota: None,
                max_lite_topic_size: None,
            }));
        }
        None => {}
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_get_limits_and_retries_consumers_get_polling_and_backoff() {
        let producer = effective(
            &v2::Settings {
                client_type: Some(v2::ClientType::Producer as i32),
                pub_sub: Some(v2::settings::PubSub::Publishing(v2::Publishing::default())),
                ..Default::default()
            },
            default_consumer_retry_policy(),
            false,
        );
        let Some(v2::settings::PubSub::Publishing(p)) = producer.pub_sub else {
            panic!()
        };
        assert_eq!(p.max_body_size, MAX_BODY_SIZE);
        assert!(p.validate_message_type);
        assert!(matches!(
            producer.backoff_policy.unwrap().strategy,
            Some(v2::retry_policy::Strategy::ExponentialBackoff(_))
        ));
        let consumer = effective(
            &v2::Settings {
                pub_sub: Some(v2::settings::PubSub::Subscription(v2::Subscription::default())),
                ..Default::default()
            },
            default_consumer_retry_policy(),
            false,
        );
        let Some(v2::settings::PubSub::Subscription(sub)) = consumer.pub_sub else {
            panic!()
        };
        assert_eq!(sub.long_polling_timeout.unwrap().seconds, 20);
        assert_eq!(sub.receive_batch_size, Some(32));
        assert_eq!(sub.fifo, Some(false));
        assert_eq!(consumer.backoff_policy.unwrap().max_attempts, 17);
        assert!(!consumer.metric.unwrap().on);
    }
}
