//! The Portcullis gateway: listeners, TLS, the request pipeline (one ordered list
//! of steps in `pipeline.rs`), the route table, upstream pools and forwarding, and
//! the one mapping of rejections to responses (`reject.rs`).

pub mod ai_request;
pub mod authn;
pub mod body;
pub mod connect;
pub mod cors;
pub mod decision;
pub mod evidence;
pub mod exchange;
pub mod explain;
pub mod forward;
pub mod gateway;
pub mod h2_streams;
pub mod headers;
pub mod hygiene;
pub mod introspect;
pub mod observe;
pub mod otel;
pub mod parser_refusal;
pub mod pipeline;
pub mod pool;
pub mod rate_limit;
pub mod rate_store;
pub mod recent;
pub mod reject;
pub mod reload;
pub mod resource_metadata;
pub mod route_table;
pub mod runtime;
pub mod server;
pub mod sse;
pub mod status_page;
pub mod tls;
pub mod token_cache;
pub mod tracecontext;
pub mod upstream;
pub mod upstream_token;
pub mod usage;

pub use gateway::{ApplyReport, Gateway};
pub use pipeline::ConnInfo;
pub use reload::Reloader;
pub use server::{bind_workers, connection_slots, serve, serve_worker};
