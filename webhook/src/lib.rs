//! pod-reloaded's mutating admission webhook.
//!
//! `inject` holds the injection rules (pure), `admission` the request flow, `rbac` the
//! API side effect, `tls` the reloadable certificate, `server` the HTTP wiring.

pub mod admission;
pub mod config;
pub mod inject;
pub mod metrics;
pub mod rbac;
pub mod server;
pub mod tls;
