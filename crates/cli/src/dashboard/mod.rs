//! `raftmq dashboard`: a read-only web dashboard of a cluster, one page served by this command
//! with everything embedded (no CDN, no external network): the cluster (groups, nodes, roles,
//! terms, applied indexes, lag, heartbeat age, disk), topics (queues per group, messages stored,
//! send rate with a small chart), consumer groups (members, lag per queue, dead letters) and a
//! message lookup
//! (by id, by key, or by topic/group/queue/offset). The page polls the JSON API below once a
//! second, so a change shows within about a second.
//!
//! API: `GET /api/cluster`, `GET /api/topics`, `GET /api/groups`, `GET /api/message?id=ID`,
//! `?topic=T&key=K`, or `?topic=T&group=G&queue=Q&offset=O`. With `--admin` only, changes:
//! `POST /api/topics?topic=T&queues=N`, `POST /api/offsets?group=G&topic=T&to=earliest|latest|MS`,
//! `POST /api/dead-letters?group=G` (otherwise 403, `NO_PERMISSION`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::RawQuery;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::Args;
use raftmq_client::admin::ResetTo;
use raftmq_client::{Admin, Client, Error, MessageQueue, ReadPreference};
use serde_json::{json, Value};

use crate::messaging::message_json;

const PAGE: &str = include_str!("index.html");

#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// Where to serve the dashboard (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Allow changes from the page: create topics, reset a consumer group's offsets, resend its
    /// dead letters. Without it the dashboard only reads (there is no authentication yet: give
    /// this to an address only operators reach).
    #[arg(long)]
    admin: bool,
}

pub(crate) async fn run(namesrv: &[String], timeout: Duration, args: DashboardArgs) -> anyhow::Result<()> {
    let mut config = crate::client_config(namesrv);
    config.request_timeout = timeout;
    config.send_timeout = timeout;
    let admin = Admin::new(Client::new(config)?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let app = router(admin, args.admin);
    // Scripts and tests read this line for the address.
    println!("raftmq dashboard at http://{}/", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(raftmq_common::runtime::shutdown_signal())
        .await?;
    Ok(())
}

type Handler = fn(Admin, Option<String>) -> futures::future::BoxFuture<'static, Result<Value, Error>>;

fn router(admin: Admin, changes: bool) -> Router {
    let api = |f: Handler| {
        let admin = admin.clone();
        get(move |RawQuery(query): RawQuery| {
            let admin = admin.clone();
            async move { answer(f(admin, query).await) }
        })
    };
    // A change: refused unless the dashboard was started with --admin.
    let change = |f: Handler| {
        let admin = admin.clone();
        axum::routing::post(move |RawQuery(query): RawQuery| {
            let admin = admin.clone();
            async move {
                if !changes {
                    let refused = raftmq_client::ErrorCode::NoPermission
                        .err("the dashboard is read-only; start it with --admin to make changes");
                    return answer(Err(refused));
                }
                answer(f(admin, query).await)
            }
        })
    };
    Router::new()
        .route(
            "/",
            get(|| async { ([(CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }),
        )
        .route(
            "/api/config",
            get(move || async move { answer(Ok(json!({ "admin": changes }))) }),
        )
        .route("/api/cluster", api(|a, _| Box::pin(cluster(a))))
        .route(
            "/api/topics",
            api(|a, _| Box::pin(topics(a))).merge(change(|a, q| Box::pin(create_topic(a, q)))),
        )
        .route("/api/groups", api(|a, _| Box::pin(groups(a))))
        .route("/api/message", api(|a, q| Box::pin(message(a, q))))
        .route("/api/offsets", change(|a, q| Box::pin(reset_offsets(a, q))))
        .route("/api/dead-letters", change(|a, q| Box::pin(resend_dead_letters(a, q))))
}

/// `POST /api/topics?topic=T&queues=N`: creates (or updates) a topic in every broker group.
async fn create_topic(admin: Admin, query: Option<String>) -> Result<Value, Error> {
    let q = query_pairs(query.as_deref().unwrap_or(""));
    let topic = required(&q, "topic")?;
    let queues: u32 = match q.get("queues").filter(|v| !v.is_empty()) {
        Some(v) => v.parse().map_err(|_| invalid("queues must be a number"))?,
        None => 4,
    };
    let groups = admin
        .upsert_topic(topic, queues, queues, raftmq_proto::Permission::ReadWrite, &[])
        .await?;
    Ok(json!({"topic": topic, "queues": queues, "groups": groups}))
}

/// `POST /api/offsets?group=G&topic=T&to=earliest|latest|MS`: moves a consumer group's offsets.
async fn reset_offsets(admin: Admin, query: Option<String>) -> Result<Value, Error> {
    let q = query_pairs(query.as_deref().unwrap_or(""));
    let (group, topic) = (required(&q, "group")?, required(&q, "topic")?);
    let to = match required(&q, "to")?.as_str() {
        "earliest" => ResetTo::Earliest,
        "latest" => ResetTo::Latest,
        ms => ResetTo::Timestamp(
            ms.parse()
                .map_err(|_| invalid("to must be earliest, latest or a time in ms since the epoch"))?,
        ),
    };
    let moved = admin.reset_offsets(group, topic, to).await?;
    let queues: Vec<Value> = moved
        .iter()
        .map(|(q, o)| json!({"group": q.group, "queue_id": q.queue_id, "offset": o}))
        .collect();
    Ok(json!({"consumer_group": group, "topic": topic, "queues": queues}))
}

/// `POST /api/dead-letters?group=G`: sends a consumer group's dead letters back to their topics.
async fn resend_dead_letters(admin: Admin, query: Option<String>) -> Result<Value, Error> {
    let q = query_pairs(query.as_deref().unwrap_or(""));
    let group = required(&q, "group")?;
    let resent = admin.resend_dead_letters(group).await?;
    Ok(json!({"consumer_group": group, "resent": resent}))
}

fn invalid(why: &str) -> Error {
    raftmq_client::ErrorCode::InvalidArgument.err(why.to_owned())
}

fn required<'a>(q: &'a BTreeMap<String, String>, name: &str) -> Result<&'a String, Error> {
    q.get(name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid(&format!("{name} is missing")))
}

/// A JSON answer, or the error's stable code and message with a status that fits it.
fn answer(result: Result<Value, Error>) -> Response {
    let (status, body) = match result {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => {
            let status = match e.code {
                raftmq_client::ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
                raftmq_client::ErrorCode::NoPermission => StatusCode::FORBIDDEN,
                raftmq_client::ErrorCode::TopicNotFound | raftmq_client::ErrorCode::MessageNotFound => {
                    StatusCode::NOT_FOUND
                }
                _ => StatusCode::BAD_GATEWAY,
            };
            (status, json!({"code": e.code.as_str(), "message": e.message}))
        }
    };
    (status, [(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn role_name(role: i32) -> &'static str {
    match raftmq_proto::Role::try_from(role) {
        Ok(raftmq_proto::Role::Master) => "master",
        Ok(raftmq_proto::Role::Slave) => "slave",
        _ => "unknown",
    }
}

async fn cluster(admin: Admin) -> Result<Value, Error> {
    let info = admin.cluster().await?;
    // Each node's own status, for its disk (a node that does not answer within 300 ms has none).
    let client = admin.client();
    let addrs: Vec<String> = info
        .groups
        .iter()
        .flat_map(|g| g.nodes.iter().map(|n| n.addr.clone()))
        .collect();
    let statuses = futures::future::join_all(addrs.iter().map(|a| crate::ops::node_status(&client, a))).await;
    let disks: BTreeMap<&str, (f64, u64)> = addrs
        .iter()
        .zip(statuses)
        .filter_map(|(a, s)| s.map(|s| (a.as_str(), (s.disk_used_percent, s.disk_available_bytes))))
        .collect();
    let groups: Vec<Value> = info
        .groups
        .iter()
        .map(|g| {
            let master_applied = g
                .nodes
                .iter()
                .find(|n| n.node_id == g.master_node_id)
                .map_or(0, |n| n.applied_index);
            let nodes: Vec<Value> = g
                .nodes
                .iter()
                .map(|n| {
                    json!({
                        "node_id": n.node_id, "addr": n.addr, "role": role_name(n.role), "term": n.term,
                        "applied_index": n.applied_index,
                        "lag": master_applied.saturating_sub(n.applied_index),
                        "heartbeat_age_ms": n.last_heartbeat_ms_ago,
                        "disk_used_percent": disks.get(n.addr.as_str()).map(|d| (d.0 * 10.0).round() / 10.0),
                        "disk_available_bytes": disks.get(n.addr.as_str()).map(|d| d.1),
                    })
                })
                .collect();
            json!({
                "cluster": g.cluster, "group": g.group, "master_addr": g.master_addr,
                "master_node_id": g.master_node_id, "term": g.term, "nodes": nodes,
            })
        })
        .collect();
    Ok(json!({ "groups": groups }))
}

/// Every topic: per queue its group, id and offsets, and the total stored.
async fn topics(admin: Admin) -> Result<Value, Error> {
    let mut out = Vec::new();
    for topic in admin.topics().await? {
        let queues = admin.queue_bounds(&topic).await?;
        let stored: u64 = queues.iter().map(|q| q.max_offset - q.min_offset).sum();
        let written: u64 = queues.iter().map(|q| q.max_offset).sum();
        let mut groups: BTreeMap<&str, u32> = BTreeMap::new();
        for q in &queues {
            *groups.entry(q.queue.group.as_str()).or_default() += 1;
        }
        let queues: Vec<Value> = queues
            .iter()
            .map(|q| json!({"group": q.queue.group, "queue_id": q.queue.queue_id, "min_offset": q.min_offset, "max_offset": q.max_offset}))
            .collect();
        out.push(
            json!({"topic": topic, "stored": stored, "written": written, "queues_per_group": groups, "queues": queues}),
        );
    }
    Ok(json!({ "topics": out }))
}

/// The live members of a consumer group, as the first broker group master that knows any.
async fn members(admin: &Admin, masters: &[String], group: &str) -> Vec<String> {
    let client = admin.client();
    for addr in masters {
        let Ok(mut b) = client.broker(addr) else { continue };
        let mut req = tonic::Request::new(raftmq_proto::GetConsumersRequest {
            consumer_group: group.to_owned(),
        });
        req.set_timeout(Duration::from_millis(500));
        if let Ok(r) = b.get_consumers(req).await {
            let ids = r.into_inner().client_ids;
            if !ids.is_empty() {
                return ids;
            }
        }
    }
    Vec::new()
}

/// Every consumer group with a committed offset: its live members, per topic and queue its
/// offset and lag, and its dead letters.
async fn groups(admin: Admin) -> Result<Value, Error> {
    let topics = admin.topics().await?;
    let mut by_group: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut dead: BTreeMap<String, u64> = BTreeMap::new();
    for topic in &topics {
        let bounds = admin.queue_bounds(topic).await?;
        if let Some(group) = topic.strip_prefix("%DLQ%") {
            let n = bounds.iter().map(|q| q.max_offset - q.min_offset).sum();
            dead.insert(group.to_owned(), n);
        }
        let ends: BTreeMap<&MessageQueue, u64> = bounds.iter().map(|q| (&q.queue, q.max_offset)).collect();
        for c in admin.topic_consumers(topic).await? {
            let end = ends.get(&c.queue).copied().unwrap_or(c.offset);
            by_group.entry(c.consumer_group.clone()).or_default().push(json!({
                "topic": topic, "group": c.queue.group, "queue_id": c.queue.queue_id,
                "offset": c.offset, "lag": end.saturating_sub(c.offset),
            }));
        }
    }
    let masters: Vec<String> = admin
        .cluster()
        .await?
        .groups
        .into_iter()
        .map(|g| g.master_addr)
        .filter(|a| !a.is_empty())
        .collect();
    let mut groups = Vec::new();
    for (name, queues) in by_group {
        let lag: u64 = queues.iter().filter_map(|q| q["lag"].as_u64()).sum();
        let members = members(&admin, &masters, &name).await;
        groups.push(json!({
            "consumer_group": name, "members": members, "lag": lag,
            "dead_letters": dead.get(&name).copied().unwrap_or(0), "queues": queues,
        }));
    }
    Ok(json!({ "groups": groups }))
}

/// `key=value` pairs of a query string, percent-decoded.
fn query_pairs(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn message(admin: Admin, query: Option<String>) -> Result<Value, Error> {
    let q = query_pairs(query.as_deref().unwrap_or(""));
    let bad = |why: &str| raftmq_client::ErrorCode::InvalidArgument.err(why.to_owned());
    if let Some(id) = q.get("id").filter(|v| !v.is_empty()) {
        let m = admin.message_by_id(id).await?;
        return Ok(json!({"messages": [message_json(&m)]}));
    }
    let topic = q
        .get("topic")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad("say id, or topic with key, or topic with group, queue and offset"))?;
    if let Some(key) = q.get("key").filter(|v| !v.is_empty()) {
        let found = admin.query_by_key(topic, key, None, None, 32).await?;
        let messages: Vec<Value> = found.messages.iter().map(message_json).collect();
        return Ok(json!({"messages": messages, "truncated": found.truncated}));
    }
    let number = |name: &str| -> Result<u64, Error> {
        q.get(name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(&format!("{name} must be a number")))
    };
    let group = q
        .get("group")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad("group is missing"))?;
    let queue = MessageQueue {
        group: group.clone(),
        queue_id: number("queue")? as u32,
    };
    let m = admin
        .get_message(topic, &queue, number("offset")?, ReadPreference::Master)
        .await?;
    Ok(json!({"messages": [message_json(&m)]}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let q = query_pairs("topic=Orders&key=order%2D1+x&empty=&flag");
        assert_eq!(q["topic"], "Orders");
        assert_eq!(q["key"], "order-1 x");
        assert_eq!(q["empty"], "");
        assert_eq!(q["flag"], "");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
