//! Messages by key ([`Admin::query_by_key`]): every broker group of the topic is asked, on any of
//! its nodes, and the answers are merged newest first.

use raftmq_common::{Error, ErrorCode};
use raftmq_proto as pb;

use crate::error::{classify, Retry};
use crate::message::ReceivedMessage;
use crate::Admin;

/// What a key query found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyQueryResult {
    /// Newest first (by store time), each with its broker group.
    pub messages: Vec<ReceivedMessage>,
    /// More messages may match than were returned.
    pub truncated: bool,
}

impl Admin {
    /// The messages of `topic` with `key` among their keys, stored between `begin_ms` and
    /// `end_ms` (inclusive, ms since the epoch; `None` leaves that end open), newest first, at
    /// most `max` (up to 1000). Committed messages only; a group none of whose nodes answer
    /// fails the query rather than leave its messages out.
    pub async fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        begin_ms: Option<i64>,
        end_ms: Option<i64>,
        max: u32,
    ) -> Result<KeyQueryResult, Error> {
        let route = self.client.route(topic).await?;
        let req = pb::QueryByKeyRequest {
            topic: topic.to_owned(),
            key: key.to_owned(),
            begin_ms: begin_ms.unwrap_or(0),
            end_ms: end_ms.unwrap_or(0),
            max_messages: max,
        };
        let mut result = KeyQueryResult {
            messages: Vec::new(),
            truncated: false,
        };
        for group in &route.groups {
            let reply = self
                .ask_any_node(&group.group, group.master.iter().chain(&group.slaves), &req)
                .await?;
            result.truncated |= reply.truncated;
            result.messages.extend(
                reply
                    .messages
                    .into_iter()
                    .map(|m| ReceivedMessage::from_proto(&group.group, m)),
            );
        }
        result.messages.sort_by(|a, b| {
            (b.store_timestamp_ms, &b.group, b.queue_id, b.queue_offset).cmp(&(
                a.store_timestamp_ms,
                &a.group,
                a.queue_id,
                a.queue_offset,
            ))
        });
        let limit = if max == 0 { 32 } else { max as usize };
        if result.messages.len() > limit {
            result.messages.truncate(limit);
            result.truncated = true;
        }
        Ok(result)
    }

    /// Asks the nodes of a group in turn until one answers.
    async fn ask_any_node<'a>(
        &self,
        group: &str,
        nodes: impl Iterator<Item = &'a String>,
        req: &pb::QueryByKeyRequest,
    ) -> Result<pb::QueryByKeyReply, Error> {
        let mut last = ErrorCode::Unavailable.err(format!("broker group {group} has no node to ask"));
        for addr in nodes {
            let mut b = self.client.broker(addr)?;
            match b
                .query_by_key(self.client.request(req.clone(), self.client.config().request_timeout))
                .await
            {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) => match classify(&status) {
                    (Retry::No, e) => return Err(e),
                    (_, e) => last = e,
                },
            }
        }
        Err(last)
    }
}
