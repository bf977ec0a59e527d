//! Logging: text for a terminal, or JSON lines for a log pipeline (`log-format = "json"`), each
//! carrying the node's identity (broker group and node id) and, for a broker, its current Raft
//! term. openraft's own info logs (every vote, every replication stream) are kept at warn, and
//! its per-retry replication errors off, unless the filter names openraft: the node logs its role
//! changes, elections, snapshots and unreachable peers itself, once each.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line: `ts`, `level`, `target`, the identity fields, `message` and the
    /// event's own fields.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not a log format (text or json)")),
        }
    }
}

/// What every JSON line says about the node: fixed fields (`group`, `node`) and, with
/// `term`, the current Raft term as the node last reported it ([`set_term`]).
#[derive(Debug, Default, Clone)]
pub struct LogContext {
    pub fields: Vec<(&'static str, serde_json::Value)>,
    pub term: bool,
}

/// The Raft term JSON lines carry (one node per process).
static TERM: AtomicU64 = AtomicU64::new(0);

/// Tells the log the node's current Raft term.
pub fn set_term(term: u64) {
    TERM.store(term, Ordering::Relaxed);
}

/// openraft logs every vote exchange at info, and every failed replication attempt to an
/// unreachable slave several times (every 100 ms): raftmq logs role changes, elections,
/// snapshots and a slave lost and back once each itself.
const OPENRAFT_QUIET: &str =
    "openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off";

/// The filter for a configured level: the level as given, with openraft at warn unless the level
/// names it. `RUST_LOG`, when set, is taken as it is.
pub fn filter(level: &str) -> EnvFilter {
    if let Ok(from_env) = EnvFilter::try_from_default_env() {
        return from_env;
    }
    let level = if level.contains("openraft") {
        level.to_owned()
    } else {
        format!("{level},{OPENRAFT_QUIET}")
    };
    EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new(format!("info,{OPENRAFT_QUIET}")))
}

/// Sets up logging to stderr.
pub fn init(level: &str, format: LogFormat, context: LogContext) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.event_format(JsonLines { context }).try_init(),
    };
}

/// Formats each event as one JSON object.
struct JsonLines {
    context: LogContext,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let meta = event.metadata();
        let mut line = serde_json::Map::new();
        line.insert("ts".into(), crate::time::format_time_ms(crate::time::now_ms()).into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        for (k, v) in &self.context.fields {
            line.insert((*k).into(), v.clone());
        }
        if self.context.term {
            line.insert("term".into(), TERM.load(Ordering::Relaxed).into());
        }
        event.record(&mut Fields(&mut line));
        let mut text = serde_json::Value::Object(line).to_string();
        text.push('\n');
        writer.write_str(&text)
    }
}

/// Collects an event's fields into the line; a field named like an identity field overrides it.
struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.0.insert(field.name().into(), text.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}
