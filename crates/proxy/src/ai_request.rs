//! Requests whose body the gateway reads whole: routes matched by model,
//! routes whose tokens are limited to models (`auth.models`), upstreams that
//! rewrite the model (`model_map`) or ask for streamed usage
//! (`stream_usage`), and routes with `fallback` upstreams (the request is sent
//! again). The body is read once, within the route's `max_body` and
//! `limits.body_read_timeout`, kept as one buffer, and rewritten per upstream
//! only when that upstream asks for it; otherwise it goes upstream unchanged.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis_config::UpstreamConfig;
use portcullis_policy::{Reason, Rejection, RequestedModel};

use crate::body::{BodyFault, ForwardBody};
use crate::forward::OutgoingBody;
use crate::upstream::UpstreamPool;

/// How much of its request body a route needs before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyNeed {
    /// None: the body is streamed to the upstream as it arrives.
    Stream,
    /// The bytes, to send again to a fallback upstream.
    Whole,
    /// The bytes and the JSON body's `model`.
    Model,
}

/// A request body the decision steps can read whole.
pub trait ReadableBody {
    /// The body, read whole (more than `limit` bytes is `body_too_large`, a
    /// pause longer than `read_timeout` `body_timeout`, broken framing
    /// `request_malformed`) and kept for forwarding; `None` when there is no
    /// body to read (a dry run that describes none).
    fn read_whole(
        &mut self,
        limit: u64,
        read_timeout: Duration,
    ) -> impl Future<Output = Result<Option<Bytes>, Rejection>> + Send;
}

/// A live request's body: streamed, or read whole by a model-aware route.
pub enum ClientBody {
    /// As it arrives.
    Streaming(Incoming),
    /// Read whole.
    Whole(Bytes),
}

impl ReadableBody for ClientBody {
    async fn read_whole(
        &mut self,
        limit: u64,
        read_timeout: Duration,
    ) -> Result<Option<Bytes>, Rejection> {
        let incoming = match std::mem::replace(self, ClientBody::Whole(Bytes::new())) {
            ClientBody::Whole(bytes) => {
                *self = ClientBody::Whole(bytes.clone());
                return Ok(Some(bytes));
            }
            ClientBody::Streaming(incoming) => incoming,
        };
        let fault = Arc::new(BodyFault::default());
        let body = ForwardBody::new(incoming, limit, Some(Arc::clone(&fault)), read_timeout);
        match body.collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                *self = ClientBody::Whole(bytes.clone());
                Ok(Some(bytes))
            }
            Err(_) => Err(crate::forward::body_rejection(
                fault.get().unwrap_or(crate::body::BodyFaultKind::Malformed),
                limit,
                read_timeout,
            )),
        }
    }
}

impl ReadableBody for () {
    async fn read_whole(&mut self, _: u64, _: Duration) -> Result<Option<Bytes>, Rejection> {
        Ok(None)
    }
}

/// A body a dry run describes (`portcullis diagnose --model`): what a
/// model-aware route would read, when given.
pub struct DescribedBody(pub Option<Bytes>);

impl DescribedBody {
    /// The JSON body `{"model": <model>}`, or none.
    pub fn for_model(model: Option<&str>) -> Self {
        DescribedBody(model.map(|m| Bytes::from(serde_json::json!({ "model": m }).to_string())))
    }
}

impl ReadableBody for DescribedBody {
    async fn read_whole(&mut self, limit: u64, _: Duration) -> Result<Option<Bytes>, Rejection> {
        match &self.0 {
            Some(body) if body.len() as u64 > limit => Err(Rejection::new(
                Reason::BodyTooLarge,
                format!("request body exceeds the route's limit of {limit} bytes"),
            )),
            body => Ok(body.clone()),
        }
    }
}

impl OutgoingBody for ClientBody {
    fn is_empty_body(&self) -> bool {
        match self {
            ClientBody::Streaming(incoming) => incoming.is_empty_body(),
            ClientBody::Whole(bytes) => bytes.is_empty(),
        }
    }

    fn whole_bytes(&self) -> Option<&Bytes> {
        match self {
            ClientBody::Streaming(_) => None,
            ClientBody::Whole(bytes) => Some(bytes),
        }
    }

    fn into_forward_body(
        self,
        limit: u64,
        fault: Option<Arc<BodyFault>>,
        read_timeout: Duration,
    ) -> ForwardBody {
        match self {
            ClientBody::Streaming(incoming) => {
                incoming.into_forward_body(limit, fault, read_timeout)
            }
            ClientBody::Whole(bytes) => ForwardBody::whole(bytes),
        }
    }
}

/// One upstream tried for a request, and what came of it.
#[derive(Clone)]
pub struct Attempt {
    /// The upstream.
    pub upstream: Arc<UpstreamPool>,
    /// Its status, or the reason it could not answer.
    pub outcome: AttemptOutcome,
}

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// It answered with this status.
    Status(u16),
    /// It could not be asked (connect failure, no credential, timeout, …).
    Failed(Reason),
}

impl AttemptOutcome {
    /// Whether the next upstream of the chain is tried after this: a connect
    /// failure or a missing upstream credential (nothing reached it), or an
    /// answer of 429 or 5xx (before any byte of it reached the client). A
    /// timeout or a broken answer is not: the upstream may have acted on it.
    pub fn falls_back(self) -> bool {
        match self {
            AttemptOutcome::Status(s) => s == 429 || (500..=599).contains(&s),
            AttemptOutcome::Failed(r) => matches!(
                r,
                Reason::UpstreamUnreachable | Reason::UpstreamCredentialUnavailable
            ),
        }
    }

    /// The metric label and log text: `200`, `429`, `unreachable`, ….
    pub fn label(self) -> std::borrow::Cow<'static, str> {
        match self {
            AttemptOutcome::Status(s) => s.to_string().into(),
            AttemptOutcome::Failed(Reason::UpstreamUnreachable) => "unreachable".into(),
            AttemptOutcome::Failed(Reason::UpstreamCredentialUnavailable) => "credential".into(),
            AttemptOutcome::Failed(Reason::UpstreamTimeout) => "timeout".into(),
            AttemptOutcome::Failed(r) => r.as_str().into(),
        }
    }
}

/// What the model-aware steps learned of a request (boxed in the trace: most
/// requests have none).
#[derive(Clone, Default)]
pub struct RoutingNote {
    /// The body's model and whether it asks for a stream.
    pub requested: Option<RequestedModel>,
    /// Every upstream tried, in order (only kept when there was more than one
    /// upstream to try).
    pub attempts: Vec<Attempt>,
    /// The upstream whose answer the client got, when not the route's first.
    pub answered_by: Option<Arc<UpstreamPool>>,
}

impl RoutingNote {
    /// The attempts as the access log writes them: `openai:429 azure:200`.
    pub fn attempts_text(&self) -> Option<String> {
        if self.attempts.len() < 2 {
            return None;
        }
        let parts: Vec<String> = self
            .attempts
            .iter()
            .map(|a| format!("{}:{}", a.upstream.config().name, a.outcome.label()))
            .collect();
        Some(parts.join(" "))
    }
}

/// The body as `upstream` gets it: unchanged unless its `model_map` renames
/// the model or `stream_usage` asks for the usage of a stream the client did
/// not ask it for. `None`: unchanged.
pub fn rewrite_for(
    upstream: &UpstreamConfig,
    body: &Bytes,
    requested: &RequestedModel,
) -> Result<Option<Bytes>, Rejection> {
    let renamed = upstream.model_map.get(&requested.model);
    let ask_usage = upstream.stream_usage && requested.stream;
    if renamed.is_none() && !ask_usage {
        return Ok(None);
    }
    let unreadable = || {
        Rejection::new(
            Reason::RequestMalformed,
            "the request body is not a JSON object",
        )
    };
    let mut value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|_| unreadable())?;
    let mut changed = false;
    if let Some(to) = renamed {
        value.insert("model".to_owned(), serde_json::Value::String(to.clone()));
        changed = true;
    }
    if ask_usage {
        let options = value
            .entry("stream_options")
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        match options {
            serde_json::Value::Object(o) if !o.contains_key("include_usage") => {
                o.insert("include_usage".to_owned(), serde_json::Value::Bool(true));
                changed = true;
            }
            // The client's own choice (or a malformed value the upstream will
            // refuse itself) is left as it is.
            _ => {}
        }
    }
    if !changed {
        return Ok(None);
    }
    serde_json::to_vec(&value)
        .map(|v| Some(Bytes::from(v)))
        .map_err(|_| unreadable())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(map: &[(&str, &str)], stream_usage: bool) -> UpstreamConfig {
        let yaml = "upstreams: {u: {targets: [\"http://127.0.0.1:1\"]}}\nroutes: [{name: r, upstream: u, public: true}]\n";
        let config =
            portcullis_config::load_str(yaml, "test.yaml", std::path::Path::new("."), &|_| None)
                .expect("config");
        let mut u = (*config.upstreams["u"]).clone();
        u.model_map = map
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        u.stream_usage = stream_usage;
        u
    }

    fn requested(model: &str, stream: bool) -> RequestedModel {
        RequestedModel {
            model: model.to_owned(),
            stream,
        }
    }

    #[test]
    fn rewrites_only_what_the_upstream_asks() {
        let body = Bytes::from_static(br#"{"model":"fast","messages":[],"stream":true}"#);
        let plain = upstream(&[], false);
        assert!(
            rewrite_for(&plain, &body, &requested("fast", true))
                .unwrap()
                .is_none()
        );
        let mapped = upstream(&[("fast", "gpt-4o-mini")], false);
        let out = rewrite_for(&mapped, &body, &requested("fast", true))
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["messages"], serde_json::json!([]));
        assert!(
            rewrite_for(&mapped, &body, &requested("smart", true))
                .unwrap()
                .is_none()
        );
        let usage = upstream(&[], true);
        let out = rewrite_for(&usage, &body, &requested("fast", true))
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "fast");
        // Not a stream, or the client chose: unchanged.
        assert!(
            rewrite_for(&usage, &body, &requested("fast", false))
                .unwrap()
                .is_none()
        );
        let chosen = Bytes::from_static(
            br#"{"model":"fast","stream":true,"stream_options":{"include_usage":false}}"#,
        );
        assert!(
            rewrite_for(&usage, &chosen, &requested("fast", true))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn attempts_fall_back_only_before_anything_reached_the_upstream_or_on_429_5xx() {
        assert!(AttemptOutcome::Status(429).falls_back());
        assert!(AttemptOutcome::Status(503).falls_back());
        assert!(!AttemptOutcome::Status(400).falls_back());
        assert!(!AttemptOutcome::Status(200).falls_back());
        assert!(AttemptOutcome::Failed(Reason::UpstreamUnreachable).falls_back());
        assert!(!AttemptOutcome::Failed(Reason::UpstreamTimeout).falls_back());
        assert!(!AttemptOutcome::Failed(Reason::UpstreamProtocolError).falls_back());
    }
}
