//! ghgate: a caching, token-brokering gateway in front of the GitHub REST API.
//!
//! Requests arrive at [`server`], walk the phases of [`pipeline`] (admit, identify, look up,
//! fetch, store, answer), and reach GitHub through [`upstream`]. What may be cached and for
//! how long is decided in [`cache`]; where it is kept, in [`store`]. See ARCHITECTURE.md for
//! the map and the invariants.

#![deny(missing_docs)]

pub mod activity;
pub mod app_auth;
pub mod cache;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod github;
pub mod identity;
pub mod inbound;
pub mod invalidation;
pub mod limits;
pub mod negative;
pub mod path_pattern;
pub mod pipeline;
pub mod rewrite;
pub mod server;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod webhook;
