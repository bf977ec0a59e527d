//! Sends messages with the official RocketMQ 5 Rust client and receives them back with its
//! simple consumer, acknowledging each. Exits non-zero on the first thing a user would notice.
//!
//! Usage: rocketmq5-rust-client-check ENDPOINT TOPIC

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rocketmq::conf::{ClientOption, ProducerOption, SimpleConsumerOption};
use rocketmq::model::common::{FilterExpression, FilterType};
use rocketmq::model::message::MessageBuilder;
use rocketmq::{Producer, SimpleConsumer};

fn fail(why: String) -> ! {
    println!("FAILED: {why}");
    std::process::exit(1)
}

/// Statuses that say "try again": no master at the moment, or an outcome the server could not
/// learn (a resend may store a message twice, which the check tolerates by message id).
fn transient(error: &str) -> bool {
    error.contains("HA_NOT_AVAILABLE") || error.contains("PROXY_TIMEOUT")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, topic] = args.as_slice() else {
        fail("usage: rocketmq5-rust-client-check ENDPOINT TOPIC".into())
    };
    let mut client_option = ClientOption::default();
    client_option.set_access_url(endpoint.as_str());
    client_option.set_enable_tls(false);

    let mut producer_option = ProducerOption::default();
    producer_option.set_topics(vec![topic.as_str()]);
    let mut producer = Producer::new(producer_option, client_option.clone()).unwrap_or_else(|e| fail(format!("{e}")));
    producer
        .start()
        .await
        .unwrap_or_else(|e| fail(format!("producer start: {e}")));
    let mut sent = BTreeMap::new();
    for i in 0..20 {
        let body = format!("rust client {i}").into_bytes();
        let message = || {
            MessageBuilder::builder()
                .set_topic(topic.as_str())
                .set_tag(if i % 2 == 0 { "even" } else { "odd" })
                .set_body(body.clone())
                .build()
                .unwrap_or_else(|e| fail(format!("{e}")))
        };
        // This client does not retry by itself; an application retries what the server calls
        // transient (an election under way), and so does this check, a few times.
        let mut attempt = 0;
        let receipt = loop {
            match producer.send(message()).await {
                Ok(r) => break r,
                Err(e) if transient(&e.to_string()) && attempt < 5 => {
                    attempt += 1;
                    println!("send {i}: retrying after {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => fail(format!("send {i}: {e}")),
            }
        };
        if i % 2 == 0 {
            sent.insert(receipt.message_id().to_string(), body);
        }
    }

    let mut consumer_option = SimpleConsumerOption::default();
    consumer_option.set_topics(vec![topic.as_str()]);
    consumer_option.set_consumer_group("g-rust-client");
    let mut consumer = SimpleConsumer::new(consumer_option, client_option).unwrap_or_else(|e| fail(format!("{e}")));
    consumer
        .start()
        .await
        .unwrap_or_else(|e| fail(format!("consumer start: {e}")));
    let filter = FilterExpression::new(FilterType::Tag, "even");
    let mut received = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < sent.len() && Instant::now() < deadline {
        let messages = match consumer.receive(topic.to_string(), &filter).await {
            Ok(m) => m,
            Err(e) if transient(&e.to_string()) => {
                println!("receive: retrying after {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => fail(format!("receive: {e}")),
        };
        for m in messages {
            if m.tag() != Some("even") {
                fail(format!("the tag filter let {:?} through", m.tag()));
            }
            received.insert(m.message_id().to_string(), m.body().to_vec());
            consumer.ack(&m).await.unwrap_or_else(|e| fail(format!("ack: {e}")));
        }
    }
    if received != sent {
        fail(format!(
            "sent {} tagged messages, received {} (or different bodies)",
            sent.len(),
            received.len()
        ));
    }
    println!("RESULT {{\"sent\": 20, \"received_even\": {}}}", received.len());
    // Skip the client's own shutdown chatter: the check is done.
    std::process::exit(0);
}
