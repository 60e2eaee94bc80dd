//! tollgate: an edge API gateway on Pingora.
//!
//! The binary (`src/main.rs`) is a thin command line over [`server::run`]. Modules follow
//! the request: [`config`] → [`runtime`] (one snapshot per config generation) →
//! [`proxy`] (the `ProxyHttp` phases) → [`router`] and [`upstream`].

pub mod access_log;
pub mod admin;
pub mod api_error;
pub mod auth;
pub mod canonical;
pub mod config;
pub mod connection;
pub mod db;
pub mod drain;
pub mod echo;
pub mod features;
pub mod forward;
pub mod health_probe;
pub mod limit;
pub mod metrics;
pub mod persistence;
pub mod pipeline;
pub mod problems;
pub mod proxy;
pub mod rate_limit;
pub mod reload;
pub mod request_id;
pub mod router;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod usage;
pub mod vocab;
