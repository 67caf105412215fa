//! The end-to-end suites, in one test binary so the fake GitHub and the harness compile once.
//! Each module starts the real gateway (in process, or the binary) on loopback ports in front
//! of the fake GitHub in `support`, and a real `redis-server` where the suite needs one.

mod support;

mod admin;
mod app_broker;
mod binary;
mod caching;
mod clients;
mod fleet;
mod graphql;
mod hostile;
mod lifecycle;
mod limits;
mod negative;
mod reliability;
mod replicas;
mod robustness;
mod status_page;
mod stores;
mod tidy;
mod webhooks;
