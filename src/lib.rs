//! ghgate: a caching, token-brokering gateway in front of the GitHub REST API.
//!
//! Requests arrive at [`server`], walk the phases of [`pipeline`] (admit, identify, look up,
//! fetch, store, answer), and reach GitHub through [`upstream`]. What may be cached and for
//! how long is decided in [`cache`]; where it is kept, in [`store`]. See ARCHITECTURE.md for
//! the map and the invariants.

#![deny(missing_docs)]

// The library's public face: what the binary, the end-to-end tests, the benchmarks and the
// fuzz targets use. Everything else is the gateway's own business, so the compiler can tell
// when a part of it is no longer used.
pub mod cache;
pub mod cli;
pub mod config;
pub mod github;
pub mod graphql;
pub mod identity;
pub mod inbound;
pub mod negative;
pub mod path_pattern;
pub mod rewrite;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod webhook;

mod activity;
mod app_auth;
mod breaker;
mod coalesce;
mod fleet;
mod invalidation;
mod limits;
mod pipeline;
mod status;
mod upstream;
