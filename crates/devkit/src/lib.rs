//! Development servers for Portcullis: an authorization server (OIDC discovery,
//! JWKS, client_credentials tokens), an OpenAI-compatible demo upstream, and token
//! minting. `portcullis demo` runs them beside the gateway; the tests start their
//! own on 127.0.0.1:0.

mod anthropic;
pub mod auth_server;
mod gemini;
pub mod keys;
pub mod serve;
pub mod upstream;

pub use auth_server::{
    AuthControl, AuthServer, DEMO_AUDIENCE, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, JwksFault,
};
pub use keys::{SignError, SigningKey, b64, now_unix, unsigned_token};
pub use serve::{DevBody, ServerHandle, bind_and_serve, serve};
pub use upstream::{DemoUpstream, UpstreamStats};
