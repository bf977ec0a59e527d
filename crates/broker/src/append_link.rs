//! AppendEntries between the nodes of a group over a plain TCP connection instead of gRPC.
//!
//! Every entry a master replicates goes through AppendEntries, one request at a time per
//! slave, and its round trip is on the path of every acknowledgement. Over gRPC a round trip cost
//! about 0.5 ms more than the slave's handling of it (measured: docs/benchmarks.md): the
//! request passes through tonic's buffer task and HTTP/2 connection tasks on both sides and a
//! task spawned per request. Here the replication task writes the request on its own connection
//! and the slave answers from one task per connection.
//!
//! The connection shares the Raft port with gRPC: it opens with [`MAGIC`], which an HTTP/2
//! client never sends. The slave answers with a random challenge, and the master with a hello
//! naming the group and both nodes and, when the deployment has a cluster secret, an HMAC of
//! the challenge and the hello under it. The slave checks the hello as it checks a gRPC
//! envelope, and the proof, before it reads any entry: a node that does not hold the secret
//! cannot write to the log. Then each frame is a little-endian u32 length and a bincode body:
//! an `AppendEntriesRequest` one way, the `Result` openraft returned the other.

use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use raftmq_common::auth::ClusterSecret;
use raftmq_common::shutdown::Stopping;
use raftmq_store::{NodeId, TypeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::{decode, encode_framed, MAX_RAFT_MESSAGE};

/// The first bytes of an AppendEntries connection.
pub const MAGIC: &[u8; 8] = b"RMQAPND2";

/// Who opens the connection, to whom, in which group.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Hello {
    pub group: String,
    pub from: NodeId,
    pub target: NodeId,
    /// The cluster secret's answer to the slave's challenge over the fields above (empty
    /// without a secret).
    pub proof: Vec<u8>,
}

impl Hello {
    /// The cluster secret's answer to `challenge` for this hello.
    fn answer(&self, secret: &ClusterSecret, challenge: &[u8]) -> Vec<u8> {
        let (from, target) = (self.from.to_le_bytes(), self.target.to_le_bytes());
        secret.answer(challenge, &[self.group.as_bytes(), &from, &target])
    }

    fn proves(&self, secret: &ClusterSecret, challenge: &[u8]) -> bool {
        let (from, target) = (self.from.to_le_bytes(), self.target.to_le_bytes());
        secret.check_answer(challenge, &[self.group.as_bytes(), &from, &target], &self.proof)
    }
}

/// Reads one frame's body.
pub async fn read_frame(stream: &mut TcpStream) -> std::io::Result<bytes::Bytes> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_RAFT_MESSAGE {
        return Err(std::io::Error::other(format!(
            "a frame of {len} bytes is over the limit"
        )));
    }
    // Grown as the bytes arrive, not allocated whole from a length the peer claims.
    let mut body = bytes::BytesMut::with_capacity(len.min(4 << 20));
    while body.len() < len {
        body.reserve((len - body.len()).min(4 << 20));
        let want = (len - body.len()) as u64;
        if (&mut *stream).take(want).read_buf(&mut body).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(body.freeze())
}

/// Writes a frame made by [`encode_framed`] (its first four bytes are the length).
pub async fn write_frame(stream: &mut TcpStream, mut frame: Vec<u8>) -> std::io::Result<()> {
    let len = u32::try_from(frame.len() - 4).map_err(std::io::Error::other)?;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    stream.write_all(&frame).await
}

/// What the slave side needs: its group and id, its Raft, and where it notes that its master is
/// alive (see `election::LeaderContact`).
#[derive(Clone)]
pub struct AppendServer {
    pub group: String,
    pub me: NodeId,
    pub raft: Raft<TypeConfig>,
    pub contact: Arc<crate::election::LeaderContact>,
    /// Turns true when the node stops: every connection closes.
    pub stop: Stopping,
    /// Checks the cluster secret's proof, and logs and counts refusals.
    pub guard: Arc<crate::guard::Guard>,
}

impl AppendServer {
    /// Serves one connection that opened with [`MAGIC`] (not yet read) until it closes.
    pub async fn serve(self, mut stream: TcpStream) {
        let mut stop = self.stop.clone();
        tokio::select! {
            result = self.serve_inner(&mut stream) => {
                if let Err(e) = result {
                    tracing::debug!("append connection closed: {e}");
                }
            }
            _ = stop.wait() => {}
        }
    }

    /// The connections `listener` accepts, `TCP_NODELAY` set, for gRPC; those that open with
    /// [`MAGIC`] are served here instead. Ends when the stream is dropped.
    pub fn split(self, listener: tokio::net::TcpListener) -> impl futures::Stream<Item = std::io::Result<TcpStream>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<TcpStream>>(16);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = tx.closed() => break,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY: {e}");
                }
                let (tx, server) = (tx.clone(), self.clone());
                tokio::spawn(async move {
                    // Both kinds of client speak first; one that stays silent goes to gRPC.
                    let append = tokio::time::timeout(Duration::from_secs(5), starts_with_magic(&stream))
                        .await
                        .unwrap_or(false);
                    if append {
                        server.serve(stream).await;
                    } else {
                        let _ = tx.send(Ok(stream)).await;
                    }
                });
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
    }

    async fn serve_inner(&self, stream: &mut TcpStream) -> std::io::Result<()> {
        let mut magic = [0u8; 8];
        stream.read_exact(&mut magic).await?;
        let challenge = raftmq_common::auth::nonce();
        let mut frame = vec![0u8; 4];
        frame.extend_from_slice(&challenge);
        write_frame(stream, frame).await?;
        let hello: Hello = decode(&read_frame(stream).await?).map_err(std::io::Error::other)?;
        let secret = self.guard.security().cluster_secret.as_ref();
        let accepted: Result<(), String> = if hello.group != self.group || hello.target != self.me {
            Err(format!(
                "append connection for {}/{} reached {}/{}",
                hello.group, hello.target, self.group, self.me
            ))
        } else if secret.is_some_and(|s| !hello.proves(s, &challenge)) {
            let why = format!(
                "append connection from {}/{} without a valid cluster-secret proof",
                hello.group, hello.from
            );
            self.guard.refused_peer(stream.peer_addr().ok(), "AppendEntries", &why);
            Err(why)
        } else if !crate::guard::is_member(&self.raft, hello.from) {
            let why = format!(
                "append connection from node {}, not a member of {}",
                hello.from, self.group
            );
            self.guard.refused_peer(stream.peer_addr().ok(), "AppendEntries", &why);
            Err(why)
        } else {
            Ok(())
        };
        write_frame(stream, encode_framed(&accepted, 64).map_err(std::io::Error::other)?).await?;
        if accepted.is_err() {
            return Ok(());
        }
        loop {
            let body = read_frame(stream).await?;
            // Requests keep their encoding as a slice of the frame: the slave writes it to its
            // log as it came.
            let rpc = raftmq_store::decode_sharing(&body, || decode(&body)).map_err(std::io::Error::other)?;
            let result = self.raft.append_entries(rpc).await;
            if crate::raft_service::from_live_master(&result) {
                self.contact.heard();
            }
            // This node's Raft has stopped: the connection goes, so the master connects again
            // (to whatever serves this address next) instead of hearing errors.
            if let Err(openraft::error::RaftError::Fatal(_)) = &result {
                return Ok(());
            }
            write_frame(stream, encode_framed(&result, 256).map_err(std::io::Error::other)?).await?;
        }
    }
}

/// Opens an AppendEntries connection and says hello, proved with `secret` when there is one;
/// the answer tells whether the other side is the node asked for and took the proof.
pub async fn connect(
    addr: &str,
    hello: &Hello,
    secret: Option<&ClusterSecret>,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {addr}")))??;
    stream.set_nodelay(true)?;
    stream.write_all(MAGIC).await?;
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("hello to {addr}"));
    let challenge = tokio::time::timeout(timeout, read_frame(&mut stream))
        .await
        .map_err(|_| timed_out())??;
    let mut hello = hello.clone();
    hello.proof = secret.map(|s| hello.answer(s, &challenge)).unwrap_or_default();
    write_frame(&mut stream, encode_framed(&hello, 128).map_err(std::io::Error::other)?).await?;
    let answer = tokio::time::timeout(timeout, read_frame(&mut stream))
        .await
        .map_err(|_| timed_out())??;
    let accepted: Result<(), String> = decode(&answer).map_err(std::io::Error::other)?;
    accepted.map_err(std::io::Error::other)?;
    Ok(stream)
}

/// Whether the first bytes waiting on `stream` are [`MAGIC`] (waits until enough have arrived).
async fn starts_with_magic(stream: &TcpStream) -> bool {
    let mut first = [0u8; 8];
    loop {
        match stream.peek(&mut first).await {
            Ok(n) if n >= first.len() => return &first == MAGIC,
            Ok(n) if n > 0 && first[..n] != MAGIC[..n] => return false,
            Ok(0) | Err(_) => return false,
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}
