//! Integration tests: one binary, real sockets on 127.0.0.1, the Rust Snowflake double, the
//! real Python driver against fakesnow, the real Node driver against the double, and the
//! `snowgate` binary itself.

mod config;
mod cores;
mod driver;
mod framing;
mod jwks_url;
mod limits;
mod masking;
mod node;
mod policy;
mod recording;
mod session;
mod slow_peers;
mod smuggling;
mod support;
mod tls;
