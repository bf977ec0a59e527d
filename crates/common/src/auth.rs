//! Who may do what: request signatures, users and their rights, and the cluster secret that
//! authenticates nodes to each other.
//!
//! Clients sign as RocketMQ 5's official clients do, so those work unchanged: every request
//! carries `x-mq-date-time` (UTC, `yyyyMMddTHHmmssZ`) and `authorization: MQv2-HMAC-SHA1
//! Credential=<access key>, SignedHeaders=x-mq-date-time, Signature=<hex HMAC-SHA1 of the date
//! time under the secret key>`. A server accepts a signing time within its clock skew only.
//!
//! Nodes sign with the cluster secret instead (HMAC-SHA256 over the request's own fields and
//! the time, `x-raftmq-peer`): a Raft message or a broker heartbeat from anyone who does not
//! hold the secret is refused before any of it is used.
//!
//! This module decides nothing about transport; it never logs a secret or a signature.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

/// The signing time header RocketMQ 5 clients send.
pub const DATE_TIME: &str = "x-mq-date-time";
/// The signature header.
pub const AUTHORIZATION: &str = "authorization";
/// The one algorithm RocketMQ 5 clients sign with.
pub const ALGORITHM: &str = "MQv2-HMAC-SHA1";
/// A node's signature of a request to another node.
pub const PEER: &str = "x-raftmq-peer";
/// Environment variables the CLI and the SDK read credentials from.
pub const ACCESS_KEY_ENV: &str = "RAFTMQ_ACCESS_KEY";
pub const SECRET_KEY_ENV: &str = "RAFTMQ_SECRET_KEY";

/// An access key and its secret key. The secret never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    pub fn new(access_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Credentials {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
        }
    }

    /// From `RAFTMQ_ACCESS_KEY` and `RAFTMQ_SECRET_KEY`; `None` when neither is set, an error
    /// when only one is.
    pub fn from_env() -> Result<Option<Credentials>, String> {
        let get = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        match (get(ACCESS_KEY_ENV), get(SECRET_KEY_ENV)) {
            (None, None) => Ok(None),
            (Some(a), Some(s)) => Ok(Some(Credentials::new(a, s))),
            _ => Err(format!("set both {ACCESS_KEY_ENV} and {SECRET_KEY_ENV}, or neither")),
        }
    }

    /// Reads a TOML file with `access-key` and `secret-key`.
    pub fn from_file(path: &std::path::Path) -> Result<Credentials, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let c: Credentials = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        check_access_key(&c.access_key).map_err(|e| format!("{}: access-key: {e}", path.display()))?;
        if c.secret_key.len() < 8 {
            return Err(format!("{}: secret-key: at least 8 characters", path.display()));
        }
        Ok(c)
    }

    /// The two headers of a request signed now: (`x-mq-date-time`, `authorization`).
    pub fn sign(&self, now: SystemTime) -> (String, String) {
        let date_time = format_date_time(now);
        let signature = hmac_sha1_hex(self.secret_key.as_bytes(), date_time.as_bytes());
        let authorization = format!(
            "{ALGORITHM} Credential={}, SignedHeaders={DATE_TIME}, Signature={signature}",
            self.access_key
        );
        (date_time, authorization)
    }
}

/// An access key: 1 to 64 characters of letters, digits, `-`, `_` and `.`.
pub fn check_access_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 64 {
        return Err("1 to 64 characters".into());
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("{key:?}: only letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

fn hmac_sha1_hex(key: &[u8], data: &[u8]) -> String {
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A parsed `authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub access_key: String,
    pub signature: String,
}

/// Parses `MQv2-HMAC-SHA1 Credential=AK, SignedHeaders=x-mq-date-time, Signature=HEX`. RocketMQ
/// clients may put a scope after the access key (`AK/region/service`); only the key counts.
pub fn parse_authorization(value: &str) -> Result<Signed, String> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| format!("the authorization header is not {ALGORITHM}"))?;
    let (mut key, mut headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let Some((name, v)) = part.trim().split_once('=') else {
            return Err(format!(
                "the authorization header has a part without '=': {:?}",
                part.trim()
            ));
        };
        match name.trim() {
            "Credential" => key = Some(v.split('/').next().unwrap_or_default().trim().to_owned()),
            "SignedHeaders" => headers = Some(v.trim().to_owned()),
            "Signature" => signature = Some(v.trim().to_ascii_lowercase()),
            _ => {}
        }
    }
    let access_key = key
        .filter(|k| !k.is_empty())
        .ok_or("the authorization header names no Credential")?;
    if headers.as_deref() != Some(DATE_TIME) {
        return Err(format!("the authorization header must sign {DATE_TIME} and only it"));
    }
    let signature = signature
        .filter(|s| !s.is_empty())
        .ok_or("the authorization header has no Signature")?;
    Ok(Signed { access_key, signature })
}

/// Checks a signature made by [`Credentials::sign`] with `secret_key` over `date_time`, and that
/// the date time is within `skew` of `now` either way.
pub fn verify(
    signed: &Signed,
    secret_key: &str,
    date_time: &str,
    now: SystemTime,
    skew: Duration,
) -> Result<(), String> {
    let at = parse_date_time(date_time).ok_or_else(|| format!("{DATE_TIME} {date_time:?} is not yyyyMMddTHHmmssZ"))?;
    let off = match now.duration_since(at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if off > skew {
        return Err(format!(
            "the request was signed at {date_time}, {}s away from this node's clock (the limit is {}s)",
            off.as_secs(),
            skew.as_secs()
        ));
    }
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret_key.as_bytes()).expect("any key length");
    mac.update(date_time.as_bytes());
    let expected = unhex(&signed.signature).ok_or("the signature is not hexadecimal")?;
    mac.verify_slice(&expected)
        .map_err(|_| format!("the signature does not match access key {:?}", signed.access_key))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `yyyyMMddTHHmmssZ` in UTC.
pub fn format_date_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::time::civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The inverse of [`format_date_time`].
pub fn parse_date_time(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, min, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    let secs = days_from_civil(y, m, d) * 86_400 + h * 3600 + min * 60 + sec;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

// The inverse of `time::civil_from_days` (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Rights a user holds on a topic or a group.
pub mod right {
    /// Send to a topic (also transactions and recalls on it).
    pub const PUB: u8 = 1;
    /// Read a topic; consume for a group.
    pub const SUB: u8 = 2;
}

/// A user: an access key, its secret key, and what it may do. Kept in the replicated
/// metadata of every broker group, so every node of a group enforces the same rules.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub access_key: String,
    pub secret_key: String,
    /// May do everything, including topic, group, offset, membership and fault changes.
    pub admin: bool,
    /// (pattern, rights) on topics: a name, `prefix*`, or `*`.
    pub topics: Vec<(String, u8)>,
    /// (pattern, rights) on consumer groups.
    pub groups: Vec<(String, u8)>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("access_key", &self.access_key)
            .field("admin", &self.admin)
            .field("topics", &self.topics)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// What a request needs, checked by [`User::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Only a known, authenticated caller (route, status and metadata reads).
    Known,
    Publish(&'a str),
    Subscribe(&'a str),
    /// Consuming for a group (offsets, heartbeats, locks, acknowledgements).
    Group(&'a str),
    /// Topic, group, offset, user, membership and fault changes.
    Admin,
}

impl std::fmt::Display for Need<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::Known => f.write_str("an authenticated caller"),
            Need::Publish(t) => write!(f, "pub on topic {t:?}"),
            Need::Subscribe(t) => write!(f, "sub on topic {t:?}"),
            Need::Group(g) => write!(f, "sub on group {g:?}"),
            Need::Admin => f.write_str("admin"),
        }
    }
}

/// Whether `pattern` (a name, `prefix*` or `*`) covers `name`.
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn granted(grants: &[(String, u8)], name: &str, right: u8) -> bool {
    grants.iter().any(|(p, r)| r & right != 0 && matches(p, name))
}

impl User {
    pub fn allows(&self, need: Need<'_>) -> bool {
        self.admin
            || match need {
                Need::Known => true,
                Need::Publish(t) => granted(&self.topics, t, right::PUB),
                Need::Subscribe(t) => granted(&self.topics, t, right::SUB),
                Need::Group(g) => granted(&self.groups, g, right::SUB),
                Need::Admin => false,
            }
    }

    /// Checks the fields a user is stored with.
    pub fn validate(&self) -> Result<(), String> {
        check_access_key(&self.access_key).map_err(|e| format!("access key: {e}"))?;
        if self.secret_key.len() < 8 || self.secret_key.len() > 256 {
            return Err("secret key: 8 to 256 characters".into());
        }
        for (what, grants) in [("topic", &self.topics), ("group", &self.groups)] {
            for (pattern, rights) in grants {
                let name = pattern.strip_suffix('*').unwrap_or(pattern);
                if pattern.len() > 255 || name.contains('*') {
                    return Err(format!(
                        "{what} pattern {pattern:?}: a name, a prefix ending in '*', or '*'"
                    ));
                }
                if *rights & !(right::PUB | right::SUB) != 0 || *rights == 0 {
                    return Err(format!("{what} pattern {pattern:?}: rights must be pub, sub or both"));
                }
            }
        }
        Ok(())
    }
}

/// Parses rights as the CLI writes them: `pub`, `sub`, `pub+sub` (or `pub,sub`).
pub fn parse_rights(s: &str) -> Result<u8, String> {
    let mut r = 0;
    for part in s.split(['+', ',']) {
        r |= match part.trim() {
            "pub" => right::PUB,
            "sub" => right::SUB,
            other => return Err(format!("unknown right {other:?}: pub, sub or pub+sub")),
        };
    }
    Ok(r)
}

/// The CLI's spelling of rights.
pub fn rights_name(r: u8) -> &'static str {
    match r & (right::PUB | right::SUB) {
        right::PUB => "pub",
        right::SUB => "sub",
        0 => "none",
        _ => "pub+sub",
    }
}

/// The cluster secret shared by the nodes of a deployment (brokers and NameServers).
#[derive(Clone)]
pub struct ClusterSecret(std::sync::Arc<[u8]>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<hidden>)")
    }
}

impl ClusterSecret {
    /// At least 16 bytes, trailing whitespace trimmed.
    pub fn new(bytes: &[u8]) -> Result<Self, String> {
        let trimmed = bytes.trim_ascii_end();
        if trimmed.len() < 16 {
            return Err("the cluster secret must be at least 16 bytes".into());
        }
        Ok(ClusterSecret(trimmed.into()))
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::new(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn mac(&self, at_ms: u64, parts: &[&[u8]]) -> Hmac<sha2::Sha256> {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(b"raftmq-peer-v1");
        mac.update(&at_ms.to_le_bytes());
        for p in parts {
            // Length-prefixed, so that moving bytes between parts changes the MAC.
            mac.update(&(p.len() as u64).to_le_bytes());
            mac.update(p);
        }
        mac
    }

    /// A proof over `parts` at `at_ms`: `<ms>.<hex mac>`, the value of [`PEER`].
    pub fn sign(&self, at_ms: u64, parts: &[&[u8]]) -> String {
        format!("{at_ms}.{}", hex(&self.mac(at_ms, parts).finalize().into_bytes()))
    }

    /// Checks a proof made by [`ClusterSecret::sign`] over the same parts, made within `skew`
    /// of `now_ms`.
    pub fn verify(&self, proof: &str, parts: &[&[u8]], now_ms: u64, skew: Duration) -> Result<(), String> {
        let (at, mac) = proof.split_once('.').ok_or("a malformed peer proof")?;
        let at: u64 = at.parse().map_err(|_| "a malformed peer proof")?;
        if now_ms.abs_diff(at) > skew.as_millis() as u64 {
            return Err(format!(
                "a peer proof made {} ms away from this node's clock",
                now_ms.abs_diff(at)
            ));
        }
        let mac_bytes = unhex(mac).ok_or("a malformed peer proof")?;
        self.mac(at, parts)
            .verify_slice(&mac_bytes)
            .map_err(|_| "the peer proof does not match this cluster's secret".to_owned())
    }

    /// A proof for a challenge (the append link's handshake): no clock involved.
    pub fn answer(&self, challenge: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut all = vec![challenge];
        all.extend_from_slice(parts);
        self.mac(0, &all).finalize().into_bytes().to_vec()
    }

    /// Checks an [`ClusterSecret::answer`].
    pub fn check_answer(&self, challenge: &[u8], parts: &[&[u8]], answer: &[u8]) -> bool {
        let mut all = vec![challenge];
        all.extend_from_slice(parts);
        self.mac(0, &all).verify_slice(answer).is_ok()
    }
}

/// What a broker node's proof to a NameServer covers: the call and the node it speaks for.
/// (Not the body: a NameServer of another version decodes and re-encodes it differently.)
pub fn broker_call_parts<R>(
    call: &str,
    cluster: &str,
    group: &str,
    node_id: u64,
    with: impl FnOnce(&[&[u8]]) -> R,
) -> R {
    with(&[
        call.as_bytes(),
        cluster.as_bytes(),
        group.as_bytes(),
        &node_id.to_le_bytes(),
    ])
}

/// A request carrying `message`, with `proof` (made by [`ClusterSecret::sign`]) in [`PEER`]
/// when there is one.
pub fn with_proof<T>(message: T, proof: Option<String>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(proof) = proof.and_then(|p| p.parse().ok()) {
        request.metadata_mut().insert(PEER, proof);
    }
    request
}

/// Random bytes for a challenge.
pub fn nonce() -> [u8; 16] {
    let mut b = [0u8; 16];
    // The OS generator does not fail on the platforms raftmq runs on; if it did, a zero
    // challenge still needs the secret to answer, it only makes a replay possible.
    let _ = getrandom::fill(&mut b);
    b
}

#[cfg(test)]
mod tests;
