//! Integration-test harness for tollgate.
//!
//! Every helper runs a *real* server on a real socket on 127.0.0.1: the
//! `tollgate` binary itself ([`Gateway`]), HTTP upstreams ([`TestUpstream`]),
//! `redis-server` ([`RedisServer`], [`RedisCluster`]) and PostgreSQL
//! ([`Postgres`]). Each gets its own free ports and temp dir, so tests can
//! run in parallel, and each stops its processes when dropped, including
//! when the test panics (see [`process`] for the details).
//!
//! Use it from a test file with:
//!
//! ```ignore
//! mod support;
//! use support::*;
//! ```

// Each test binary compiles this module but uses only part of it.
#![allow(dead_code, unused_imports)]

mod answer;
mod certs;
mod fixtures;
mod gateway;
mod net;
mod postgres;
pub mod process;
mod redis;
mod upstream;

pub use answer::Answer;
pub use certs::{Certs, LeafCert};
pub use fixtures::{consumer_with_key, hourly_plan};
pub use gateway::{metric, Gateway, GatewayConfig};
pub use net::{free_port, http_client, http_client_builder, port_is_closed, wait_for_port};
pub use postgres::Postgres;
pub use process::CommandOutput;
pub use redis::{redis_command, RedisCluster, RedisServer, Resp};
pub use upstream::{http1_tls_acceptor, TestUpstream};
