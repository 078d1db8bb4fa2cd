//! pod-reloaded's mutating admission webhook.
//!
//! `inject` holds the injection rules (pure), `admission` the request flow, `rbac` the
//! API side effect (`existing_grants` its watch-backed view of what exists), `tls` the reloadable certificate, `server` the HTTP wiring.

pub mod admission;
pub mod config;
pub mod existing_grants;
pub mod inject;
pub mod metrics;
pub mod notify;
pub mod rbac;
pub mod reloaded;
pub mod server;
pub mod tls;
pub mod trust;
