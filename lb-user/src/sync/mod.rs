//! Flow-state sync between the two load balancers of a pair.
//!
//! - [`record`]: a flow as the pair talks about it.
//! - [`wire`]: frames and records on the wire, documented byte by byte.
//! - [`auth`]: the optional HMAC-SHA256 key and per-connection keys.

pub mod auth;
pub mod record;
pub mod wire;
