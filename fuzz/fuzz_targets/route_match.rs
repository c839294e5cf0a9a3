//! Route matching on canonical paths: never panics, and a prefix route that is
//! found really is a prefix of the path at a segment boundary.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_config::{HostMatch, PathMatch, RouteMatch};
use portcullis_proxy::route_table::{Lookup, RouteTable, normalise_host};

fn table() -> &'static RouteTable<(bool, &'static str)> {
    static TABLE: OnceLock<RouteTable<(bool, &'static str)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let route =
            |host: Option<HostMatch>, path: PathMatch, ci: bool, v: (bool, &'static str)| {
                (
                    RouteMatch {
                        host,
                        path,
                        methods: None,
                        case_insensitive: ci,
                        models: None,
                    },
                    v,
                )
            };
        RouteTable::new(vec![
            route(None, PathMatch::Prefix("/".into()), false, (false, "/")),
            route(
                None,
                PathMatch::Prefix("/admin".into()),
                true,
                (true, "/admin"),
            ),
            route(
                None,
                PathMatch::Prefix("/v1/".into()),
                false,
                (false, "/v1/"),
            ),
            route(
                None,
                PathMatch::Exact("/v1/chat/completions".into()),
                false,
                (false, "/v1/chat/completions"),
            ),
            route(
                Some(HostMatch::Suffix(".example.com".into())),
                PathMatch::Prefix("/api".into()),
                false,
                (false, "/api"),
            ),
        ])
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (host, path) = text.split_once('\n').unwrap_or(("", text));
    let Ok(path) = portcullis_policy::path::canonicalise(path, &Default::default()) else {
        return;
    };
    let host = normalise_host(host);
    if let Lookup::Found((case_insensitive, prefix)) =
        table().find(&host, &path, &http::Method::GET, None)
    {
        let p = if *case_insensitive {
            path.to_ascii_lowercase()
        } else {
            path.to_string()
        };
        assert!(p.starts_with(prefix), "{path:?} matched {prefix:?}");
    }
});
