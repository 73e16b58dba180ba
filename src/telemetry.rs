//! OpenTelemetry traces of a change's path through walhook, exported over OTLP/HTTP (JSON).
//!
//! Guarantees:
//! - off unless `[telemetry] otlp_endpoint` is set; off costs one branch per change and per
//!   attempt;
//! - one trace per change (event id): a `walhook.change` span from the source commit to the
//!   moment its outbox transaction committed, and under it one `walhook.deliver` span per HTTP
//!   request (every attempt, every subscription). The change span's ids are derived from the
//!   event id ([`ids_of`]), so an attempt finds its parent with nothing stored: after a retry,
//!   a replay or a restart alike;
//! - each request carries a W3C `traceparent` naming its `walhook.deliver` span, so a receiver
//!   that traces continues the same trace;
//! - exporting never blocks or slows delivery: spans go to a bounded queue (the SDK's batch
//!   processor drops what does not fit) and are sent in the background; an unreachable
//!   collector costs log lines, never an event;
//! - spans carry table, event, ids, subscription, HTTP status and error kind: never a payload,
//!   URL path, header value or secret.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracerProvider,
    Tracer,
};
use sha2::{Digest, Sha256};

/// Spans waiting for export, at most; beyond it new spans are dropped (and counted by the SDK).
const QUEUE: usize = 65_536;

/// Where and how to export.
pub struct Settings {
    /// OTLP/HTTP base URL (`http://collector:4318`); spans go to `<base>/v1/traces`.
    pub endpoint: String,
    pub service_name: String,
    /// How long finished spans wait before they are sent.
    pub export_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("telemetry: {0}")]
pub struct TelemetryError(String);

/// Cheap to clone; [`Telemetry::off`] does nothing.
#[derive(Clone, Default)]
pub struct Telemetry {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    provider: SdkTracerProvider,
    tracer: Tracer,
}

impl Telemetry {
    pub fn off() -> Telemetry {
        Telemetry::default()
    }

    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Starts exporting; must be called inside the tokio runtime (the exporter's requests run
    /// on it).
    pub fn start(settings: Settings) -> Result<Telemetry, TelemetryError> {
        let endpoint = format!("{}/v1/traces", settings.endpoint.trim_end_matches('/'));
        // rustls with ring and the built-in roots, like delivery: walhook installs no
        // process-wide crypto provider.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TelemetryError(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
        let client = RuntimeClient {
            http: reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| TelemetryError(e.to_string()))?,
            rt: tokio::runtime::Handle::current(),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(endpoint)
            .with_http_client(client)
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(QUEUE)
                    .with_scheduled_delay(settings.export_interval)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_id_generator(Ids::default())
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(settings.service_name)
                    .build(),
            )
            .build();
        let tracer = provider.tracer("walhook");
        Ok(Telemetry {
            inner: Some(Arc::new(Inner { provider, tracer })),
        })
    }

    /// A change's outbox transaction committed: its `walhook.change` span, from the source
    /// commit to now.
    pub fn change_stored(&self, c: &ChangeSpan, stored: SystemTime) {
        let Some(inner) = &self.inner else {
            return;
        };
        let (trace_id, span_id) = ids_of(&c.event_id);
        let builder = inner
            .tracer
            .span_builder("walhook.change")
            .with_kind(SpanKind::Consumer)
            .with_start_time(c.commit.min(stored))
            .with_attributes([
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.collection.name", c.table.clone()),
                KeyValue::new("walhook.event", c.event),
                KeyValue::new("walhook.event_id", c.event_id.clone()),
                KeyValue::new("walhook.commit_lsn", c.commit_lsn.clone()),
                KeyValue::new("walhook.deliveries", c.deliveries as i64),
            ]);
        NEXT_IDS.with(|n| n.set(Some((trace_id, span_id))));
        let mut span = inner.tracer.build_with_context(builder, &Context::new());
        NEXT_IDS.with(|n| n.set(None));
        span.end_with_timestamp(stored);
    }

    /// Starts the `walhook.deliver` span of one request (child of the change span of
    /// `event_id`, the request's first event).
    pub fn attempt(&self, a: AttemptSpan<'_>) -> Attempt {
        let Some(inner) = &self.inner else {
            return Attempt { span: None };
        };
        let (trace_id, parent) = ids_of(a.event_id);
        let parent = Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            parent,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ));
        let builder = inner
            .tracer
            .span_builder("walhook.deliver")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("server.address", host_of(a.url)),
                KeyValue::new("walhook.subscription", a.subscription.to_string()),
                KeyValue::new("walhook.event_id", a.event_id.to_string()),
                KeyValue::new("walhook.delivery_id", a.delivery_id),
                KeyValue::new("walhook.attempt", a.attempt as i64),
                KeyValue::new("walhook.batch_size", a.events as i64),
            ]);
        Attempt {
            span: Some(inner.tracer.build_with_context(builder, &parent)),
        }
    }

    /// Sends what is queued and stops; waits at most a few seconds.
    pub async fn shutdown(&self) {
        if let Some(inner) = &self.inner {
            let provider = inner.provider.clone();
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// What the `walhook.change` span says.
#[derive(Debug, Clone)]
pub struct ChangeSpan {
    pub event_id: String,
    pub table: String,
    pub event: &'static str,
    pub commit: SystemTime,
    pub commit_lsn: String,
    /// Deliveries stored for it (one per matching subscription).
    pub deliveries: usize,
}

/// What a `walhook.deliver` span says.
pub struct AttemptSpan<'a> {
    pub event_id: &'a str,
    pub subscription: &'a str,
    /// The subscription's URL; only its host is exported, and only when tracing is on (parsing
    /// it for every request otherwise cost 1.4% of walhook's CPU).
    pub url: &'a str,
    pub delivery_id: i64,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Events in the request (1 unless batched).
    pub events: usize,
}

/// A request's span while it runs.
pub struct Attempt {
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl Attempt {
    /// The W3C `traceparent` header value naming this request's span.
    pub fn traceparent(&self) -> Option<String> {
        let sc = self.span.as_ref()?.span_context().clone();
        Some(format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        ))
    }

    /// Ends the span with the request's outcome.
    pub fn end(self, http_status: Option<u16>, error_kind: Option<&str>) {
        let Some(mut span) = self.span else {
            return;
        };
        if let Some(s) = http_status {
            span.set_attribute(KeyValue::new("http.response.status_code", s as i64));
        }
        let ok = error_kind.is_none() && http_status.is_some_and(|s| (200..300).contains(&s));
        if ok {
            span.set_status(Status::Ok);
        } else {
            let kind = error_kind
                .map(str::to_string)
                .or_else(|| http_status.map(|s| s.to_string()))
                .unwrap_or_else(|| "error".into());
            span.set_attribute(KeyValue::new("error.type", kind.clone()));
            span.set_status(Status::error(kind));
        }
        span.end();
    }
}

/// The trace id and the change span's id of an event: the first 24 bytes of SHA-256 of its id.
pub fn ids_of(event_id: &str) -> (TraceId, SpanId) {
    let h = Sha256::digest(event_id.as_bytes());
    let mut t = [0u8; 16];
    let mut s = [0u8; 8];
    t.copy_from_slice(&h[..16]);
    s.copy_from_slice(&h[16..24]);
    // All-zero ids are invalid; a digest that produces one gets its last byte set.
    if t == [0; 16] {
        t[15] = 1;
    }
    if s == [0; 8] {
        s[7] = 1;
    }
    (TraceId::from_bytes(t), SpanId::from_bytes(s))
}

thread_local! {
    /// Ids the next span built on this thread takes (the SDK takes a root span's ids from the
    /// id generator only).
    static NEXT_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Random ids, except for a change span, whose ids are derived from its event id.
#[derive(Debug, Default)]
struct Ids(RandomIdGenerator);

impl IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS
            .with(Cell::get)
            .map_or_else(|| self.0.new_trace_id(), |(t, _)| t)
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_IDS
            .with(Cell::get)
            .map_or_else(|| self.0.new_span_id(), |(_, s)| s)
    }
}

/// The exporter's HTTP client: walhook's reqwest, run on walhook's runtime (the SDK's export
/// thread has none of its own).
#[derive(Debug)]
struct RuntimeClient {
    http: reqwest::Client,
    rt: tokio::runtime::Handle,
}

/// Collector answers are read up to this size.
const MAX_ANSWER: usize = 64 << 10;

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let request = reqwest::Request::try_from(request)?;
        let answer = async move {
            let mut resp = http.execute(request).await?;
            let mut out = Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                if body.len() + chunk.len() > MAX_ANSWER {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, HttpError>(out.body(Bytes::from(body))?)
        };
        self.rt.spawn(answer).await?
    }
}

/// The URL's host, for the span (never the path, query or credentials).
fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_hosts_hide_credentials_path_and_query() {
        assert_eq!(
            host_of("https://user:pw@hooks.example.com/x?token=1"),
            "hooks.example.com"
        );
        assert_eq!(host_of("not a url"), "?");
    }

    #[test]
    fn ids_are_stable_per_event_and_differ_between_events() {
        let (t1, s1) = ids_of("evt_1");
        assert_eq!(ids_of("evt_1"), (t1, s1));
        let (t2, s2) = ids_of("evt_2");
        assert_ne!(t1, t2);
        assert_ne!(s1, s2);
        assert_ne!(t1, TraceId::INVALID);
        assert_ne!(s1, SpanId::INVALID);
    }

    #[test]
    fn off_does_nothing_and_sends_no_traceparent() {
        let t = Telemetry::off();
        assert!(!t.is_on());
        let a = t.attempt(AttemptSpan {
            event_id: "evt_1",
            subscription: "s",
            url: "http://127.0.0.1/",
            delivery_id: 1,
            attempt: 1,
            events: 1,
        });
        assert_eq!(a.traceparent(), None);
        a.end(Some(200), None);
    }
}
