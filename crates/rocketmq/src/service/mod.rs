//! The `MessagingService` gRPC service over a [`Backend`], with forwarding to the master.
//!
//! Writes and receives (send, receive, ack, change invisible duration, dead-letter) run where
//! the backend says: here on the master, otherwise forwarded to the master ([`forward`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use raftmq_common::auth::Need;
use raftmq_common::shutdown::Stopping;
use raftmq_common::time::now_ms;
use raftmq_common::validate;
use raftmq_proto::rocketmq::messaging_service_client::MessagingServiceClient;
use raftmq_proto::rocketmq::messaging_service_server::MessagingService as Service;
use raftmq_proto::rocketmq::{self as v2, Code};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::status::{ok, summary, Fail};

#[macro_use]
mod forward;

use crate::{full_name, route, settings, timestamp_ms, Backend};
use forward::{caller_timeout, forward_failed, forwarded, strip, Master};

/// The namespace header RocketMQ clients send.
const NAMESPACE: &str = "x-mq-namespace";
/// Largest message accepted or sent: a 4 MiB body plus headers and properties, with room.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Receives end this long before the caller's deadline, so the answer arrives in time.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);
/// Longest receive wait when the client names none.
const DEFAULT_POLL: Duration = Duration::from_secs(20);

type Reply<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The service, cloned per connection by tonic.
pub struct MessagingService<B> {
    backend: Arc<B>,
    masters: Arc<Mutex<HashMap<String, MessagingServiceClient<Channel>>>>,
    stop: Stopping,
    /// TLS to the masters requests are forwarded to, when client ports serve TLS.
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl<B> Clone for MessagingService<B> {
    fn clone(&self) -> Self {
        MessagingService {
            backend: self.backend.clone(),
            masters: self.masters.clone(),
            stop: self.stop.clone(),
            tls: self.tls.clone(),
        }
    }
}

impl<B: Backend> MessagingService<B> {
    /// `stop` turning true ends telemetry streams, so a node can shut down.
    pub fn new(backend: Arc<B>, stop: Stopping) -> Self {
        MessagingService {
            backend,
            masters: Arc::default(),
            stop,
            tls: None,
        }
    }

    /// Forwards to masters over TLS with these settings.
    pub fn with_tls(mut self, tls: Option<tonic::transport::ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// The tonic server, with decode and encode limits that fit a 4 MiB body.
    pub fn server(self) -> v2::messaging_service_server::MessagingServiceServer<Self> {
        v2::messaging_service_server::MessagingServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}

impl<B: Backend> MessagingService<B> {
    /// Checks a consumer request's group and topic names, then that its caller may consume
    /// the topic for the group.
    fn group_and_topic(
        &self,
        md: &MetadataMap,
        caller: Option<std::net::SocketAddr>,
        what: &str,
        namespace: &str,
        (group, topic): (&Option<v2::Resource>, &Option<v2::Resource>),
    ) -> Result<(), Fail> {
        let group = check_group(namespace, group.as_ref())?;
        let topic = check_topic(namespace, topic.as_ref())?;
        self.allow(md, caller, what, &[Need::Group(&group), Need::Subscribe(&topic)])
    }

    /// Lets a request named `what` through if its caller holds every need (the backend's rules).
    fn allow(
        &self,
        md: &MetadataMap,
        caller: Option<std::net::SocketAddr>,
        what: &str,
        needs: &[Need<'_>],
    ) -> Result<(), Fail> {
        self.backend.authorize(md, caller, what, needs)
    }
}

/// The request's namespace: from the resource when it names one, else the header.
fn namespace_of(md: &MetadataMap, resource: Option<&v2::Resource>) -> String {
    match resource {
        Some(r) if !r.resource_namespace.is_empty() => r.resource_namespace.clone(),
        _ => md
            .get(NAMESPACE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    }
}

fn check_topic(namespace: &str, topic: Option<&v2::Resource>) -> Result<String, Fail> {
    let topic = topic.ok_or_else(|| Fail::new(Code::IllegalTopic, "field `topic`: missing"))?;
    let name = full_name(namespace, &topic.name);
    validate::name("topic", &name).map_err(|e| Fail::new(Code::IllegalTopic, e.to_string()))?;
    Ok(name)
}

fn check_group(namespace: &str, group: Option<&v2::Resource>) -> Result<String, Fail> {
    let group = group.ok_or_else(|| Fail::new(Code::IllegalConsumerGroup, "field `group`: missing"))?;
    let name = full_name(namespace, &group.name);
    validate::name("group", &name).map_err(|e| Fail::new(Code::IllegalConsumerGroup, e.to_string()))?;
    Ok(name)
}

fn unsupported(what: &str) -> v2::Status {
    Fail::new(Code::Unsupported, format!("raftmq does not serve {what}")).status()
}

fn one<T: Send + 'static>(item: T) -> BoxStream<T> {
    Box::pin(futures::stream::iter([Ok(item)]))
}

fn receive_status(status: v2::Status) -> v2::ReceiveMessageResponse {
    v2::ReceiveMessageResponse {
        content: Some(v2::receive_message_response::Content::Status(status)),
    }
}

#[tonic::async_trait]
impl<B: Backend> Service for MessagingService<B> {
    async fn query_route(&self, request: Request<v2::QueryRouteRequest>) -> Reply<v2::QueryRouteResponse> {
        let caller = request.remote_addr();
        let (md, _, req) = request.into_parts();
        let namespace = namespace_of(&md, req.topic.as_ref());
        let answer = async {
            self.allow(&md, caller, "QueryRoute", &[Need::Known])?;
            let name = check_topic(&namespace, req.topic.as_ref())?;
            let route = self.backend.route(&name).await?;
            let mut echoed = req.topic.clone().unwrap_or_default();
            echoed.resource_namespace = namespace.clone();
            let queues = route::message_queues(&route, &echoed);
            if queues.is_empty() {
                return Err(Fail::new(
                    Code::TopicNotFound,
                    format!("TOPIC_NOT_FOUND: no live broker group holds topic {name:?}"),
                ));
            }
            Ok(queues)
        };
        Ok(Response::new(match answer.await {
            Ok(message_queues) => v2::QueryRouteResponse {
                status: Some(ok()),
                message_queues,
            },
            Err(f) => v2::QueryRouteResponse {
                status: Some(f.status()),
                message_queues: vec![],
            },
        }))
    }

    async fn heartbeat(&self, request: Request<v2::HeartbeatRequest>) -> Reply<v2::HeartbeatResponse> {
        let status = match self.allow(request.metadata(), request.remote_addr(), "Heartbeat", &[Need::Known]) {
            Ok(()) => ok(),
            Err(f) => f.status(),
        };
        Ok(Response::new(v2::HeartbeatResponse { status: Some(status) }))
    }

    async fn send_message(&self, request: Request<v2::SendMessageRequest>) -> Reply<v2::SendMessageResponse> {
        let caller = request.remote_addr();
        let (md, _, req) = request.into_parts();
        let fail = |f: Fail| {
            Ok(Response::new(v2::SendMessageResponse {
                status: Some(f.status()),
                entries: vec![],
            }))
        };
        let Some(first) = req.messages.first() else {
            return fail(Fail::bad_request("field `messages`: empty"));
        };
        let namespace = namespace_of(&md, first.topic.as_ref());
        let mut topic = None;
        for m in &req.messages {
            match check_topic(&namespace, m.topic.as_ref()) {
                Ok(name) if topic.as_ref().is_none_or(|t| *t == name) => topic = Some(name),
                Ok(_) => {
                    return fail(Fail::bad_request(
                        "every message of one request must name the same topic",
                    ))
                }
                Err(f) => return fail(f),
            }
        }
        if let Err(f) = self.allow(
            &md,
            caller,
            "SendMessage",
            &[Need::Publish(topic.as_deref().unwrap_or_default())],
        ) {
            return fail(f);
        }
        match self.route_write(&md).await {
            Err(f) => fail(f),
            Ok(Some(master)) => forward!(self, md, master, req, send_message).map(strip).or_else(fail),
            Ok(None) => match self.backend.send(&namespace, req.messages).await {
                Ok(entries) => Ok(Response::new(v2::SendMessageResponse {
                    status: Some(summary(entries.iter().filter_map(|e| e.status.as_ref()))),
                    entries,
                })),
                Err(f) => fail(f),
            },
        }
    }

    async fn query_assignment(
        &self,
        request: Request<v2::QueryAssignmentRequest>,
    ) -> Reply<v2::QueryAssignmentResponse> {
        let caller = request.remote_addr();
        let (md, _, req) = request.into_parts();
        let namespace = namespace_of(&md, req.topic.as_ref());
        let answer = async {
            let name = check_topic(&namespace, req.topic.as_ref())?;
            let group = check_group(&namespace_of(&md, req.group.as_ref()), req.group.as_ref())?;
            self.allow(
                &md,
                caller,
                "QueryAssignment",
                &[Need::Group(&group), Need::Subscribe(&name)],
            )?;
            let route = self.backend.route(&name).await?;
            let mut echoed = req.topic.clone().unwrap_or_default();
            echoed.resource_namespace = namespace.clone();
            Ok::<_, Fail>(route::assignments(&route, &echoed))
        };
        Ok(Response::new(match answer.await {
            Ok(assignments) => v2::QueryAssignmentResponse {
                status: Some(ok()),
                assignments,
            },
            Err(f) => v2::QueryAssignmentResponse {
                status: Some(f.status()),
                assignments: vec![],
            },
        }))
    }

    type ReceiveMessageStream = BoxStream<v2::ReceiveMessageResponse>;

    async fn receive_message(&self, request: Request<v2::ReceiveMessageRequest>) -> Reply<Self::ReceiveMessageStream> {
        let caller = request.remote_addr();
        let (md, _, req) = request.into_parts();
        let topic = req.message_queue.as_ref().and_then(|q| q.topic.as_ref());
        let namespace = namespace_of(&md, req.group.as_ref().or(topic));
        let checked = check_group(&namespace, req.group.as_ref()).and_then(|group| {
            let topic = check_topic(&namespace, topic)?;
            self.allow(
                &md,
                caller,
                "ReceiveMessage",
                &[Need::Group(&group), Need::Subscribe(&topic)],
            )
        });
        if let Err(f) = checked {
            return Ok(Response::new(one(receive_status(f.status()))));
        }
        let master = match self.route_write(&md).await {
            Ok(m) => m,
            Err(f) => return Ok(Response::new(one(receive_status(f.status())))),
        };
        if let Some(master) = master {
            return Ok(Response::new(match forward!(self, md, master, req, receive_message) {
                Ok(stream) => Box::pin(stream.into_inner()),
                Err(f) => one(receive_status(f.status())),
            }));
        }
        // Wait up to what the client asked, but answer before its deadline.
        let asked = req
            .long_polling_timeout
            .as_ref()
            .map(crate::duration)
            .unwrap_or(DEFAULT_POLL);
        let wait = match caller_timeout(&md) {
            Some(t) => asked.min(t.saturating_sub(DEADLINE_MARGIN.max(t / 5))),
            None => asked,
        };
        let mut items = Vec::new();
        let received = self.backend.receive(&namespace, &req, wait).await;
        tracing::debug!(
            group = req.group.as_ref().map(|g| g.name.as_str()).unwrap_or_default(),
            queue = req.message_queue.as_ref().map(|q| q.id).unwrap_or_default(),
            ?wait,
            result = ?received.as_ref().map(|m| m.len()),
            "receive"
        );
        match received {
            Ok(messages) if messages.is_empty() => {
                items.push(receive_status(
                    Fail::new(Code::MessageNotFound, "no new message within the long-polling time").status(),
                ));
            }
            Ok(messages) => {
                items.push(receive_status(ok()));
                items.extend(messages.into_iter().map(|m| v2::ReceiveMessageResponse {
                    content: Some(v2::receive_message_response::Content::Message(m)),
                }));
            }
            Err(f) => items.push(receive_status(f.status())),
        }
        items.push(v2::ReceiveMessageResponse {
            content: Some(v2::receive_message_response::Content::DeliveryTimestamp(timestamp_ms(
                now_ms(),
            ))),
        });
        Ok(Response::new(Box::pin(futures::stream::iter(
            items.into_iter().map(Ok),
        ))))
    }

    async fn ack_message(&self, request: Request<v2::AckMessageRequest>) -> Reply<v2::AckMessageResponse> {
        let caller = request.remote_addr();
        let (md, _, req) = request.into_parts();
        let fail = |f: Fail| {
            Ok(Response::new(v2::AckMessageResponse {
                status: Some(f.status()),
                entries: vec![],
            }))
        };
        let namespace = namespace_of(&md, req.group.as_ref());
        if let Err(f) = self.group_and_topic(&md, caller, "AckMessage", &namespace, (&req.group, &req.topic)) {
            return fail(f);
        }
        if req.entries.is_empty() {
            return fail(Fail::bad_request("field `entries`: empty"));
        }
        match self.route_write(&md).await {
            Err(f) => fail(f),
            Ok(Some(master)) => forward!(self, md, master, req, ack_message).map(strip).or_else(fail),
            Ok(None) => match self.backend.ack(&namespace, &req).await {
                Ok(entries) => Ok(Response::new(v2::AckMessageResponse {
                    status: Some(summary(entries.iter().filter_map(|e| e.status.as_ref()))),
                    entries,
                })),
                Err(f) => fail(f),
            },
        }
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        request: Request<v2::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Reply<v2::ForwardMessageToDeadLetterQueueResponse> {
        let caller = request.remote_addr();
        let (md, _, req) = request.into_parts();
        let answer = |r: Result<(), Fail>| {
            Ok(Response::new(v2::ForwardMessageToDeadLetterQueueResponse {
                status: Some(match r {
                    Ok(()) => ok(),
                    Err(f) => f.status(),
                }),
            }))
        };
        let namespace = namespace_of(&md, req.group.as_ref());
        let what = "ForwardMessageToDeadLetterQueue";
        if let Err(f) = self.group_and_topic(&md, caller, what, &namespace, (&req.group, &req.topic)) {
            return answer(Err(f));
        }
        match self.route_write(&md).await {
            Err(f) => answer(Err(f)),
            Ok(Some(master)) => forward!(self, md, master, req, forward_message_to_dead_letter_queue)
                .map(strip)
                .or_else(|f| answer(Err(f))),
            Ok(None) => answer(self.backend.forward_to_dead_letter(&namespace, &req).await),
        }
    }

    type PullMessageStream = BoxStream<v2::PullMessageResponse>;

    async fn pull_message(&self, _request: Request<v2::PullMessageRequest>) -> Reply<Self::PullMessageStream> {
        Ok(Response::new(one(v2::PullMessageResponse {
            content: Some(v2::pull_message_response::Content::Status(unsupported(
                "PullMessage (use raftmq's own pull consumer, or POP receives)",
            ))),
        })))
    }

    async fn update_offset(&self, _request: Request<v2::UpdateOffsetRequest>) -> Reply<v2::UpdateOffsetResponse> {
        Ok(Response::new(v2::UpdateOffsetResponse {
            status: Some(unsupported("UpdateOffset")),
        }))
    }

    async fn get_offset(&self, _request: Request<v2::GetOffsetRequest>) -> Reply<v2::GetOffsetResponse> {
        Ok(Response::new(v2::GetOffsetResponse {
            status: Some(unsupported("GetOffset")),
            offset: 0,
        }))
    }

    async fn query_offset(&self, _request: Request<v2::QueryOffsetRequest>) -> Reply<v2::QueryOffsetResponse> {
        Ok(Response::new(v2::QueryOffsetResponse {
            status: Some(unsupported("QueryOffset")),
            offset: 0,
        }))
    }

    async fn end_transaction(&self, request: Request<v2::EndTransactionRequest>) -> Reply<v2::EndTransactionResponse> {
        let caller = request.remote_addr();
        let (md, _, req) = request.into_parts();
        let answer = |r: Result<(), Fail>| {
            Ok(Response::new(v2::EndTransactionResponse {
                status: Some(match r {
                    Ok(()) => ok(),
                    Err(f) => f.status(),
                }),
            }))
        };
        let namespace = namespace_of(&md, req.topic.as_ref());
        let topic = match check_topic(&namespace, req.topic.as_ref()) {
            Ok(topic) => topic,
            Err(f) => return answer(Err(f)),
        };
        if let Err(f) = self.allow(&md, caller, "EndTransaction", &[Need::Publish(&topic)]) {
            return answer(Err(f));
        }
        let target = self.backend.transaction_target(&topic, &req.transaction_id).await;
        match self.route_to(&md, target) {
            Err(f) => answer(Err(f)),
            Ok(Some(master)) => forward!(self, md, master, req, end_transaction)
                .map(strip)
                .or_else(|f| answer(Err(f))),
            Ok(None) => answer(self.backend.end_transaction(&namespace, &req).await),
        }
    }

    type TelemetryStream = BoxStream<v2::TelemetryCommand>;

    async fn telemetry(&self, request: Request<Streaming<v2::TelemetryCommand>>) -> Reply<Self::TelemetryStream> {
        let (md, caller) = (request.metadata().clone(), request.remote_addr());
        if let Err(f) = self.allow(&md, caller, "Telemetry", &[Need::Known]) {
            return Ok(Response::new(one(v2::TelemetryCommand {
                status: Some(f.status()),
                command: None,
            })));
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let mut stop = self.stop.clone();
        let backend = self.backend.clone();
        tokio::spawn(async move {
            // A producer's registration for transaction checks, while its stream lives.
            let mut _producer: Option<Box<dyn Send + Sync>> = None;
            loop {
                let command = tokio::select! {
                    c = inbound.next() => c,
                    _ = stop.wait() => break,
                };
                let command = match command {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        tracing::debug!("telemetry stream ended: {e}");
                        break;
                    }
                    None => break,
                };
                // Settings get the effective settings; everything else (thread stack traces,
                // verification results) needs no answer.
                if let Some(v2::telemetry_command::Command::Settings(s)) = command.command {
                    if let Some(v2::settings::PubSub::Publishing(publishing)) = &s.pub_sub {
                        let topics = publishing
                            .topics
                            .iter()
                            .map(|t| full_name(&t.resource_namespace, &t.name))
                            .collect::<Vec<String>>();
                        // Transaction checks show the half messages of these topics.
                        let needs: Vec<Need> = topics.iter().map(|t| Need::Publish(t)).collect();
                        if let Err(f) = backend.authorize(&md, caller, "Telemetry", &needs) {
                            let refused = v2::TelemetryCommand {
                                status: Some(f.status()),
                                command: None,
                            };
                            let _ = tx.send(Ok(refused)).await;
                            break;
                        }
                        let namespace = publishing
                            .topics
                            .first()
                            .map(|t| t.resource_namespace.clone())
                            .unwrap_or_default();
                        _producer = backend.register_producer(&namespace, topics, tx.clone());
                    }
                    // A subscription that names no group gets the node's defaults.
                    let (retry, fifo) = match &s.pub_sub {
                        Some(v2::settings::PubSub::Subscription(sub)) => {
                            let group = sub
                                .group
                                .as_ref()
                                .map(|g| full_name(&g.resource_namespace, &g.name))
                                .unwrap_or_default();
                            (backend.consumer_retry_policy(&group), backend.consumer_is_fifo(&group))
                        }
                        _ => (settings::default_consumer_retry_policy(), false),
                    };
                    // A subscription whose filter does not parse is told so at once (its
                    // receives fail the same way); the settings are answered all the same.
                    let status = match &s.pub_sub {
                        Some(v2::settings::PubSub::Subscription(sub)) => sub
                            .subscriptions
                            .iter()
                            .find_map(|e| crate::filter_of(e.expression.as_ref()).err())
                            .map_or_else(ok, |fail| fail.status()),
                        _ => ok(),
                    };
                    let reply = v2::TelemetryCommand {
                        status: Some(status),
                        command: Some(v2::telemetry_command::Command::Settings(settings::effective(
                            &s, retry, fifo,
                        ))),
                    };
                    if tx.send(Ok(reply)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn notify_client_termination(
        &self,
        request: Request<v2::NotifyClientTerminationRequest>,
    ) -> Reply<v2::NotifyClientTerminationResponse> {
        let what = "NotifyClientTermination";
        let status = match self.allow(request.metadata(), request.remote_addr(), what, &[Need::Known]) {
            Ok(()) => ok(),
            Err(f) => f.status(),
        };
        Ok(Response::new(v2::NotifyClientTerminationResponse {
            status: Some(status),
        }))
    }

    async fn change_invisible_duration(
        &self,
        request: Request<v2::ChangeInvisibleDurationRequest>,
    ) -> Reply<v2::ChangeInvisibleDurationResponse> {
        let caller = request.remote_addr();
        let (md, _, req) = request.into_parts();
        let answer = |r: Result<String, Fail>| {
            Ok(Response::new(match r {
                Ok(receipt_handle) => v2::ChangeInvisibleDurationResponse {
                    status: Some(ok()),
                    receipt_handle,
                },
                Err(f) => v2::ChangeInvisibleDurationResponse {
                    status: Some(f.status()),
                    receipt_handle: String::new(),
                },
            }))
        };
        let namespace = namespace_of(&md, req.group.as_ref());
        let what = "ChangeInvisibleDuration";
        if let Err(f) = self.group_and_topic(&md, caller, what, &namespace, (&req.group, &req.topic)) {
            return answer(Err(f));
        }
        match self.route_write(&md).await {
            Err(f) => answer(Err(f)),
            Ok(Some(master)) => forward!(self, md, master, req, change_invisible_duration)
                .map(strip)
                .or_else(|f| answer(Err(f))),
            Ok(None) => answer(self.backend.change_invisible(&namespace, &req).await),
        }
    }

    async fn recall_message(&self, request: Request<v2::RecallMessageRequest>) -> Reply<v2::RecallMessageResponse> {
        let caller = request.remote_addr();
        let (md, _, req) = request.into_parts();
        let answer = |r: Result<String, Fail>| {
            Ok(Response::new(match r {
                Ok(message_id) => v2::RecallMessageResponse {
                    status: Some(ok()),
                    message_id,
                },
                Err(f) => v2::RecallMessageResponse {
                    status: Some(f.status()),
                    message_id: String::new(),
                },
            }))
        };
        let namespace = namespace_of(&md, req.topic.as_ref());
        let topic = match check_topic(&namespace, req.topic.as_ref()) {
            Ok(topic) => topic,
            Err(f) => return answer(Err(f)),
        };
        if let Err(f) = self.allow(&md, caller, "RecallMessage", &[Need::Publish(&topic)]) {
            return answer(Err(f));
        }
        let target = self.backend.recall_target(&topic, &req.recall_handle).await;
        match self.route_to(&md, target) {
            Err(f) => answer(Err(f)),
            Ok(Some(master)) => forward!(self, md, master, req, recall_message)
                .map(strip)
                .or_else(|f| answer(Err(f))),
            Ok(None) => answer(self.backend.recall(&namespace, &req).await),
        }
    }

    async fn sync_lite_subscription(
        &self,
        _request: Request<v2::SyncLiteSubscriptionRequest>,
    ) -> Reply<v2::SyncLiteSubscriptionResponse> {
        Ok(Response::new(v2::SyncLiteSubscriptionResponse {
            status: Some(unsupported("lite topics")),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut md = MetadataMap::new();
        md.insert("grpc-timeout", "33S".parse().unwrap());
        assert_eq!(caller_timeout(&md), Some(Duration::from_secs(33)));
        md.insert("grpc-timeout", "2500m".parse().unwrap());
        assert_eq!(caller_timeout(&md), Some(Duration::from_millis(2500)));
        md.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(caller_timeout(&md), None);
    }

    #[test]
    fn the_namespace_comes_from_the_resource_then_the_header() {
        let mut md = MetadataMap::new();
        md.insert(NAMESPACE, "hdr".parse().unwrap());
        let r = v2::Resource {
            resource_namespace: "res".into(),
            name: "T".into(),
        };
        assert_eq!(namespace_of(&md, Some(&r)), "res");
        assert_eq!(namespace_of(&md, None), "hdr");
        assert_eq!(full_name("hdr", "T"), "hdr%T");
        assert_eq!(full_name("", "T"), "T");
    }
}
