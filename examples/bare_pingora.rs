//! The benchmark's reference: a bare Pingora 0.9 HTTP proxy with one fixed peer and nothing
//! else (no routing, no auth, no limits, no logging, no metrics), so `make bench` can give every
//! tollgate figure as a ratio to the framework itself.
//!
//! One worker thread and an upstream keep-alive pool of 512 connections; everything else is
//! Pingora's default. `make bench` builds it with the same profile as tollgate
//! (`cargo build --profile dist --example bare_pingora`) and loadtest/bench.py starts it as
//!
//! ```text
//! target/dist/examples/bare_pingora 127.0.0.1:8080 127.0.0.1:9000
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

/// Keep-alive connections kept to the upstream (Pingora's default is 128).
const KEEPALIVE_POOL: usize = 512;

/// Sends every request to the one peer.
struct Bare {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn parse_address(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("{text:?} is not an IP address with a port: {e}"))
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN_ADDRESS UPSTREAM_ADDRESS (e.g. 127.0.0.1:8080 127.0.0.1:9000)");
        return ExitCode::from(2);
    };
    let (listen, upstream) = match (parse_address(&listen), parse_address(&upstream)) {
        (Ok(l), Ok(u)) => (l, u),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("bare_pingora: {e}");
            return ExitCode::from(2);
        }
    };
    let pid = std::process::id();
    let conf = ServerConf {
        threads: 1,
        upstream_keepalive_pool_size: KEEPALIVE_POOL,
        // Per-process paths, so several can run side by side; shutdown without a drain.
        pid_file: format!("/tmp/bare-pingora-{pid}.pid"),
        upgrade_sock: format!("/tmp/bare-pingora-{pid}.sock"),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            peer: HttpPeer::new(upstream, false, String::new()),
        },
    );
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server.run_forever()
}
