//! `tollgate echo`: a tiny upstream that answers every request with a JSON description of
//! it. It is the demo upstream of `make run`, and handy for trying routes by hand.

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;
use std::collections::BTreeMap;

struct Echo {
    name: String,
}

#[async_trait]
impl ServeHttp for Echo {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let mut body_bytes = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body_bytes += chunk.len();
        }
        let req = session.req_header();
        let headers: BTreeMap<String, String> = req
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = serde_json::json!({
            "upstream": self.name,
            "method": req.method.as_str(),
            "path": req.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            "headers": headers,
            "body_bytes": body_bytes,
        });
        let mut body = serde_json::to_vec_pretty(&body).unwrap_or_default();
        body.push(b'\n');
        http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .expect("static status and header names are valid")
    }
}

/// Serves the echo upstream on `address` until interrupted.
pub fn run(address: &str, name: &str) -> ! {
    let conf = ServerConf {
        pid_file: format!("/tmp/tollgate-echo-{}.pid", std::process::id()),
        upgrade_sock: format!("/tmp/tollgate-echo-{}.sock", std::process::id()),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut service = Service::new(
        "tollgate echo".to_string(),
        Echo {
            name: name.to_string(),
        },
    );
    service.add_tcp(address);
    server.add_service(service);
    log::info!("echo upstream {name:?} listening on {address}");
    server.run_forever()
}
