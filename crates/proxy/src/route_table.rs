//! The route matcher, compiled once per configuration.
//!
//! Precedence, most specific first, deterministically:
//! 1. host: exact host, then wildcard hosts (longest suffix first), then routes with no host;
//! 2. path: an exact path, then the longest prefix;
//! 3. method: routes listing the method before routes taking any method;
//! 4. ties: the order in the file.
//!
//! A route with `case_insensitive: true` is stored lower-cased and matched against
//! the lower-cased path, at the same precedence as the others (a case-sensitive
//! route wins a tie at the same length).
//!
//! A route matched by model (`match.models`) sits in its bucket like any other;
//! the first lookup of a request, without a model, stops at such a bucket and
//! asks for the body's model ([`Lookup::NeedsModel`]); the second, with it,
//! takes the bucket's first route whose patterns match (or a route of the same
//! bucket without models). A model no route of the bucket serves is refused
//! there ([`Lookup::ModelNotServed`]), never passed on to a shorter prefix:
//! `gpt-4o ` must not slip from a guarded route to a catch-all.
//!
//! A lookup is a hash lookup per host group and per `/` boundary of the path: no
//! allocation, and no scan over all routes, so 10 and 10,000 routes cost the same.

use foldhash::HashMap;
use foldhash::HashMapExt;

use http::Method;
use portcullis_config::{HostMatch, PathMatch, RouteMatch};
use portcullis_policy::ModelPattern;

/// The outcome of a lookup.
#[derive(Debug)]
pub enum Lookup<'a, T> {
    /// The route to use.
    Found(&'a T),
    /// Routes match the host and path but not the method; these methods would.
    MethodNotAllowed(Vec<Method>),
    /// Nothing matches.
    NotFound,
    /// The routes here are matched by the JSON body's model: look again with
    /// it. These are the candidates (for the body's size limit).
    NeedsModel(Vec<&'a T>),
    /// Routes here are matched by model and none serves this one: the
    /// patterns they serve.
    ModelNotServed(Vec<&'a str>),
}

struct Entry<T> {
    methods: Option<Vec<Method>>,
    models: Option<Vec<ModelPattern>>,
    order: usize,
    value: T,
}

impl<T> Entry<T> {
    fn takes(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(method))
    }
}

/// What one bucket says of a request.
enum Picked<'a, T> {
    Found(&'a T),
    /// No route here takes the method.
    Continue,
    NeedsModel(&'a [Entry<T>]),
    ModelNotServed(&'a [Entry<T>]),
}

struct PathIndex<T> {
    exact: HashMap<String, Vec<Entry<T>>>,
    prefix: HashMap<String, Vec<Entry<T>>>,
    /// Case-insensitive routes, keyed lower-case.
    exact_ci: HashMap<String, Vec<Entry<T>>>,
    prefix_ci: HashMap<String, Vec<Entry<T>>>,
}

impl<T> Default for PathIndex<T> {
    fn default() -> Self {
        PathIndex {
            exact: HashMap::new(),
            prefix: HashMap::new(),
            exact_ci: HashMap::new(),
            prefix_ci: HashMap::new(),
        }
    }
}

/// Routes indexed by host, then path.
pub struct RouteTable<T> {
    exact_hosts: HashMap<String, PathIndex<T>>,
    /// (".example.com", index), longest suffix first.
    suffix_hosts: Vec<(String, PathIndex<T>)>,
    any_host: PathIndex<T>,
    len: usize,
    /// Whether any route is case-insensitive (else no lower-cased copy is made).
    any_case_insensitive: bool,
}

impl<T> RouteTable<T> {
    /// Builds the table; `routes` are in file order.
    pub fn new(routes: impl IntoIterator<Item = (RouteMatch, T)>) -> Self {
        let mut table = RouteTable {
            exact_hosts: HashMap::new(),
            suffix_hosts: Vec::new(),
            any_host: PathIndex::default(),
            len: 0,
            any_case_insensitive: false,
        };
        for (order, (m, value)) in routes.into_iter().enumerate() {
            let index = match &m.host {
                None => &mut table.any_host,
                Some(HostMatch::Exact(h)) => table.exact_hosts.entry(h.clone()).or_default(),
                Some(HostMatch::Suffix(s)) => {
                    match table.suffix_hosts.iter().position(|(k, _)| k == s) {
                        Some(i) => &mut table.suffix_hosts[i].1,
                        None => {
                            table.suffix_hosts.push((s.clone(), PathIndex::default()));
                            let last = table.suffix_hosts.len() - 1;
                            &mut table.suffix_hosts[last].1
                        }
                    }
                }
            };
            let entry = Entry {
                methods: m.methods.clone(),
                models: m.models.clone(),
                order,
                value,
            };
            table.any_case_insensitive |= m.case_insensitive;
            let bucket = match (m.path, m.case_insensitive) {
                (PathMatch::Exact(p), false) => index.exact.entry(p).or_default(),
                (PathMatch::Prefix(p), false) => index.prefix.entry(p).or_default(),
                (PathMatch::Exact(p), true) => {
                    index.exact_ci.entry(p.to_ascii_lowercase()).or_default()
                }
                (PathMatch::Prefix(p), true) => {
                    index.prefix_ci.entry(p.to_ascii_lowercase()).or_default()
                }
            };
            bucket.push(entry);
            // Method-restricted routes first, then file order.
            bucket.sort_by_key(|e| (e.methods.is_none(), e.order));
            table.len += 1;
        }
        table
            .suffix_hosts
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        table
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finds the route for a request. `host` is lower-case without port;
    /// `model` is the JSON body's model once read (see [`Lookup::NeedsModel`]).
    pub fn find(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        model: Option<&str>,
    ) -> Lookup<'_, T> {
        let mut allowed: Vec<Method> = Vec::new();
        let lower = (self.any_case_insensitive && path.bytes().any(|b| b.is_ascii_uppercase()))
            .then(|| path.to_ascii_lowercase());
        let lower = lower.as_deref().unwrap_or(path);
        let groups = self
            .exact_hosts
            .get(host)
            .into_iter()
            .chain(
                self.suffix_hosts
                    .iter()
                    .filter(|(s, _)| host.ends_with(s.as_str()) && host.len() > s.len())
                    .map(|(_, i)| i),
            )
            .chain(std::iter::once(&self.any_host));
        for index in groups {
            match index.find(path, lower, method, model, &mut allowed) {
                Picked::Found(found) => return Lookup::Found(found),
                Picked::Continue => {}
                Picked::NeedsModel(bucket) => {
                    return Lookup::NeedsModel(
                        bucket
                            .iter()
                            .filter(|e| e.takes(method))
                            .map(|e| &e.value)
                            .collect(),
                    );
                }
                Picked::ModelNotServed(bucket) => {
                    return Lookup::ModelNotServed(
                        bucket
                            .iter()
                            .filter(|e| e.takes(method))
                            .flat_map(|e| e.models.iter().flatten().map(ModelPattern::as_str))
                            .collect(),
                    );
                }
            }
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            allowed.dedup();
            Lookup::MethodNotAllowed(allowed)
        }
    }
}

impl<T> PathIndex<T> {
    /// `lower` is `path` lower-cased (the same length: ASCII only), for the
    /// case-insensitive routes.
    fn find<'a>(
        &'a self,
        path: &str,
        lower: &str,
        method: &Method,
        model: Option<&str>,
        allowed: &mut Vec<Method>,
    ) -> Picked<'a, T> {
        // One candidate length: the case-sensitive routes, then the others.
        let at = |exact: bool, len: usize, allowed: &mut Vec<Method>| -> Picked<'a, T> {
            let (cs, ci) = if exact {
                (&self.exact, &self.exact_ci)
            } else {
                (&self.prefix, &self.prefix_ci)
            };
            let picked = cs
                .get(&path[..len])
                .map_or(Picked::Continue, |b| pick(b, method, model, allowed));
            if !matches!(picked, Picked::Continue) || ci.is_empty() {
                return picked;
            }
            ci.get(&lower[..len])
                .map_or(Picked::Continue, |b| pick(b, method, model, allowed))
        };
        let picked = at(true, path.len(), allowed);
        if !matches!(picked, Picked::Continue) {
            return picked;
        }
        if self.prefix.is_empty() && self.prefix_ci.is_empty() {
            return Picked::Continue;
        }
        // Candidate prefixes, longest first: the whole path, then at each '/'
        // boundary both "/a/" and "/a".
        let picked = at(false, path.len(), allowed);
        if !matches!(picked, Picked::Continue) {
            return picked;
        }
        let bytes = path.as_bytes();
        for i in (0..bytes.len()).rev() {
            if bytes[i] != b'/' {
                continue;
            }
            if i + 1 < path.len() {
                let picked = at(false, i + 1, allowed);
                if !matches!(picked, Picked::Continue) {
                    return picked;
                }
            }
            if i > 0 {
                let picked = at(false, i, allowed);
                if !matches!(picked, Picked::Continue) {
                    return picked;
                }
            }
        }
        Picked::Continue
    }
}

/// The bucket's first route taking the method (and, for a route matched by
/// model, the model); a bucket with model routes that takes the method
/// decides: it never lets the lookup go on to a shorter prefix.
fn pick<'a, T>(
    bucket: &'a [Entry<T>],
    method: &Method,
    model: Option<&str>,
    allowed: &mut Vec<Method>,
) -> Picked<'a, T> {
    let mut skipped_by_model = false;
    for e in bucket {
        if !e.takes(method) {
            allowed.extend(e.methods.iter().flatten().cloned());
            continue;
        }
        match (&e.models, model) {
            (None, _) => return Picked::Found(&e.value),
            (Some(_), None) => return Picked::NeedsModel(bucket),
            (Some(patterns), Some(m)) => {
                if portcullis_policy::models::any_matches(patterns, m) {
                    return Picked::Found(&e.value);
                }
                skipped_by_model = true;
            }
        }
    }
    if skipped_by_model {
        Picked::ModelNotServed(bucket)
    } else {
        Picked::Continue
    }
}

/// The host of a request, lower-cased, without port.
pub fn normalise_host(raw: &str) -> std::borrow::Cow<'_, str> {
    let host = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |i| &raw[..=i])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        })
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: Option<&str>, path: PathMatch, methods: Option<&[&str]>) -> RouteMatch {
        RouteMatch {
            host: host.map(|h| match h.strip_prefix('*') {
                Some(s) => HostMatch::Suffix(s.to_owned()),
                None => HostMatch::Exact(h.to_owned()),
            }),
            path,
            methods: methods.map(|ms| ms.iter().map(|s| s.parse().unwrap()).collect()),
            case_insensitive: false,
            models: None,
        }
    }
    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.into())
    }
    fn exact(p: &str) -> PathMatch {
        PathMatch::Exact(p.into())
    }

    #[test]
    fn precedence() {
        let table = RouteTable::new(vec![
            (m(None, prefix("/"), None), "root"),
            (m(None, prefix("/v1"), None), "v1"),
            (m(None, prefix("/v1/chat/"), Some(&["POST"])), "chat-post"),
            (m(None, exact("/v1/chat/completions"), None), "exact"),
            (m(Some("*.example.com"), prefix("/"), None), "wild"),
            (m(Some("*.eu.example.com"), prefix("/"), None), "wild-eu"),
            (m(Some("api.example.com"), prefix("/v1"), None), "api"),
            (m(None, prefix("/dup"), None), "dup-first"),
            (m(None, prefix("/dup"), None), "dup-second"),
        ]);
        let get = Method::GET;
        let post = Method::POST;
        let f = |h: &str, p: &str, me: &Method| match table.find(h, p, me, None) {
            Lookup::Found(v) => *v,
            Lookup::MethodNotAllowed(_) => "405",
            Lookup::NotFound => "404",
            Lookup::NeedsModel(_) | Lookup::ModelNotServed(_) => "model",
        };
        assert_eq!(f("x", "/v1/chat/completions", &get), "exact");
        assert_eq!(f("x", "/v1/chat/other", &post), "chat-post");
        assert_eq!(f("x", "/v1/chat/other", &get), "v1");
        assert_eq!(f("x", "/v1", &get), "v1");
        assert_eq!(f("x", "/v1x", &get), "root");
        assert_eq!(f("x", "/", &get), "root");
        assert_eq!(f("api.example.com", "/v1/a", &get), "api");
        assert_eq!(f("api.example.com", "/other", &get), "wild");
        assert_eq!(f("a.eu.example.com", "/", &get), "wild-eu");
        assert_eq!(f("example.com", "/z", &get), "root");
        assert_eq!(f("x", "/dup/a", &get), "dup-first");
    }

    #[test]
    fn method_not_allowed_and_not_found() {
        let table = RouteTable::new(vec![(m(None, exact("/only"), Some(&["POST", "PUT"])), 1)]);
        match table.find("h", "/only", &Method::GET, None) {
            Lookup::MethodNotAllowed(ms) => assert_eq!(ms, vec![Method::POST, Method::PUT]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            table.find("h", "/nope", &Method::GET, None),
            Lookup::NotFound
        ));
    }

    #[test]
    fn case_insensitive_routes() {
        let mut admin = m(None, prefix("/admin"), None);
        admin.case_insensitive = true;
        let table = RouteTable::new(vec![
            (m(None, prefix("/"), None), "root"),
            (admin, "admin"),
            (m(None, prefix("/Admin/exact-case"), None), "cased"),
        ]);
        let f = |p: &str| match table.find("h", p, &Method::GET, None) {
            Lookup::Found(v) => *v,
            _ => "none",
        };
        assert_eq!(f("/admin/x"), "admin");
        assert_eq!(f("/ADMIN/x"), "admin");
        assert_eq!(f("/aDmIn"), "admin");
        assert_eq!(f("/Admin/exact-case/x"), "cased");
        assert_eq!(f("/ADMIN/EXACT-CASE/x"), "admin");
        assert_eq!(f("/adminx"), "root");
        assert_eq!(f("/other"), "root");
    }

    #[test]
    fn model_routes_decide_their_bucket() {
        let by_model = |models: &[&str]| {
            let mut r = m(None, exact("/v1/chat/completions"), Some(&["POST"]));
            r.models = Some(models.iter().map(|p| ModelPattern::new(*p)).collect());
            r
        };
        let table = RouteTable::new(vec![
            (m(None, prefix("/"), None), "catch-all"),
            (by_model(&["gpt-4o*", "fast"]), "openai"),
            (by_model(&["claude-*"]), "anthropic"),
            (
                m(None, exact("/v1/chat/completions"), Some(&["GET"])),
                "get",
            ),
            (m(None, exact("/v1/embeddings"), Some(&["POST"])), "plain"),
        ]);
        let f = |p: &str, me: &Method, model: Option<&str>| match table.find("h", p, me, model) {
            Lookup::Found(v) => (*v).to_owned(),
            Lookup::NeedsModel(c) => format!("needs {c:?}"),
            Lookup::ModelNotServed(p) => format!("not served {p:?}"),
            Lookup::MethodNotAllowed(_) => "405".into(),
            Lookup::NotFound => "404".into(),
        };
        let post = Method::POST;
        assert_eq!(
            f("/v1/chat/completions", &post, None),
            r#"needs ["openai", "anthropic"]"#
        );
        assert_eq!(
            f("/v1/chat/completions", &post, Some("gpt-4o-mini")),
            "openai"
        );
        assert_eq!(f("/v1/chat/completions", &post, Some("fast")), "openai");
        assert_eq!(
            f("/v1/chat/completions", &post, Some("claude-haiku")),
            "anthropic"
        );
        // Never on to the catch-all: the bucket decides.
        assert_eq!(
            f("/v1/chat/completions", &post, Some("gpt-3.5")),
            r#"not served ["gpt-4o*", "fast", "claude-*"]"#
        );
        assert!(f("/v1/chat/completions", &post, Some("GPT-4O")).starts_with("not served"));
        // Other methods and paths are routed without a model.
        assert_eq!(f("/v1/chat/completions", &Method::GET, None), "get");
        assert_eq!(f("/v1/chat/completions", &Method::PUT, None), "catch-all");
        assert_eq!(f("/v1/embeddings", &post, None), "plain");
        assert_eq!(f("/other", &post, None), "catch-all");
    }

    #[test]
    fn hosts_normalised() {
        assert_eq!(normalise_host("API.Example.com:8443"), "api.example.com");
        assert_eq!(normalise_host("[::1]:80"), "[::1]");
        assert_eq!(normalise_host("example.com."), "example.com");
    }
}
