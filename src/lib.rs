//! snowgate: an identity-aware gateway between AI agents using ordinary Snowflake drivers and
//! a Snowflake account.
//!
//! # Layout
//! - [`http`]: HTTP/1.1 framing for both sides (pure).
//! - [`identity`]: OIDC JWT validation against a JWKS (pure; fetching is the proxy's job).
//! - [`session`]: the Snowflake protocol: routes, login rewrite, sealed tokens, refusals (pure).
//! - [`policy`]: SQL classification and the rules that allow, deny or park statements (pure).
//! - [`mask`]: masking of sensitive values in JSON and Arrow results, in place (pure).
//! - [`record`]: statement frames and the recorder they are handed to.
//! - [`config`]: the TOML file and flags, validated once into a [`config::Config`].
//! - [`proxy`]: the only network I/O: downstream connections, the upstream pool, TLS.
//! - [`runtime`]: one monoio runtime per core, listeners, signals and draining.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod http;
pub mod identity;
mod json;
pub mod mask;
mod oneshot;
pub mod policy;
pub mod proxy;
pub mod record;
pub mod runtime;
pub mod session;
