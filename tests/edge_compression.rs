//! `compression`: responses compressed by the client's `Accept-Encoding`, decoded here by
//! real decoders (flate2, brotli, zstd) back to the upstream's exact bytes, over HTTP/1.1 and
//! HTTP/2; what must not be compressed goes as it is; `defaults:`, a route's override and
//! `false`; live reload; and `tollgate check` naming every bad setting with its place.

mod support;

use reqwest::header::HeaderMap;
use reqwest::RequestBuilder;
use std::io::Read;
use std::time::{Duration, Instant};
use support::*;

/// An answer with its body as the bytes on the wire (reqwest here decodes nothing).
struct Got {
    status: u16,
    version: reqwest::Version,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn encoding(&self) -> Option<&str> {
        self.header("content-encoding")
    }

    /// Whether `Vary` names `Accept-Encoding`.
    fn varies(&self) -> bool {
        self.headers.get_all("vary").iter().any(|v| {
            v.to_str()
                .unwrap()
                .split(',')
                .any(|name| name.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    }

    /// The body as its `Content-Encoding` says, decoded.
    fn decoded(&self) -> Vec<u8> {
        match self.encoding() {
            None => self.body.clone(),
            Some(coding) => decode(coding, &self.body),
        }
    }
}

async fn fetch(req: RequestBuilder) -> Got {
    let resp = req.send().await.expect("request");
    Got {
        status: resp.status().as_u16(),
        version: resp.version(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.expect("body").to_vec(),
    }
}

/// GET `url` with `Accept-Encoding: accept` (none if `None`).
async fn get(client: &reqwest::Client, url: String, accept: Option<&str>) -> Got {
    let mut req = client.get(url);
    if let Some(accept) = accept {
        req = req.header("accept-encoding", accept);
    }
    fetch(req).await
}

/// Decodes `body` with a real decoder of `coding`; strict: an unfinished stream fails.
fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("a whole gzip stream");
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("a whole brotli stream");
        }
        "zstd" => out = zstd::decode_all(body).expect("a whole zstd stream"),
        other => panic!("unexpected Content-Encoding {other}"),
    }
    out
}

/// What the test upstream's `/__stream/{n}` sends.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A streamed text body (chunked, no Content-Length) of `n` bytes.
fn stream_path(prefix: &str, n: usize) -> String {
    format!("{prefix}/__stream/{n}?chunk=1000&content_type=text/plain;charset=utf-8")
}

/// A request header that makes the echo JSON (which has a Content-Length) larger than
/// the default `min_size` of 1 KiB.
fn pad() -> String {
    "p".repeat(3000)
}

fn upstream_line(name: &str, address: &str) -> String {
    format!("  - {{name: {name}, targets: [{{address: \"{address}\"}}]}}\n")
}

/// `/all`: every coding; `/gzip`: gzip only; `/plain`: no compression.
fn routes_yaml(a: &TestUpstream) -> String {
    format!(
        "upstreams:\n{}routes:
  - {{name: all, path_prefix: /all, upstream: a, compression: true}}
  - {{name: gzip, path_prefix: /gzip, upstream: a, compression: {{algorithms: [gzip], level: 9}}}}
  - {{name: plain, path_prefix: /plain, upstream: a}}
",
        upstream_line("a", &a.address())
    )
}

#[tokio::test]
async fn every_coding_decodes_to_the_upstreams_bytes() {
    let a = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&routes_yaml(&a));
    let gw = Gateway::start(cfg, &yaml).await;
    let expected = pattern(50_000);
    for coding in ["gzip", "br", "zstd"] {
        // Streamed (chunked, no length): compressed chunk by chunk.
        let got = get(
            gw.http(),
            gw.url(&stream_path("/all", 50_000)),
            Some(coding),
        )
        .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.encoding(), Some(coding));
        assert!(got.varies(), "{:?}", got.headers);
        assert!(got.header("content-length").is_none());
        assert!(
            got.body.len() < expected.len() / 10,
            "{coding}: {}",
            got.body.len()
        );
        assert_eq!(got.decoded(), expected, "{coding}");

        // With a Content-Length at or over min_size.
        let got = fetch(
            gw.http()
                .get(gw.url("/all/echo"))
                .header("accept-encoding", coding)
                .header("x-pad", pad()),
        )
        .await;
        assert_eq!(got.encoding(), Some(coding));
        assert!(got.varies());
        assert!(got.header("content-length").is_none());
        let echo: serde_json::Value = serde_json::from_slice(&got.decoded()).unwrap();
        assert_eq!(echo["path"], "/all/echo");
        assert_eq!(echo["headers"]["x-pad"], pad());
        // The upstream saw what the client accepts.
        assert_eq!(echo["headers"]["accept-encoding"], coding);
    }
}

#[tokio::test]
async fn http2_clients_get_the_same_compression() {
    let certs = Certs::new();
    let leaf = certs.leaf("api", &["api.test"]);
    let a = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new().with_tls(&leaf);
    let yaml = cfg.render(&routes_yaml(&a));
    let gw = Gateway::start(cfg, &yaml).await;
    let expected = pattern(30_000);
    for (path, accept, coding) in [
        ("/all", "gzip", "gzip"),
        ("/all", "br", "br"),
        ("/all", "zstd", "zstd"),
        ("/gzip", "br, gzip", "gzip"),
    ] {
        let got = get(
            gw.http(),
            gw.https_url(&stream_path(path, 30_000)),
            Some(accept),
        )
        .await;
        assert_eq!(got.version, reqwest::Version::HTTP_2);
        assert_eq!(got.status, 200);
        assert_eq!(got.encoding(), Some(coding), "{path} {accept}");
        assert!(got.varies());
        assert!(got.header("transfer-encoding").is_none());
        assert_eq!(got.decoded(), expected, "{path} {accept}");
    }
    let got = get(
        gw.http(),
        gw.https_url(&stream_path("/plain", 30_000)),
        Some("gzip"),
    )
    .await;
    assert_eq!(got.version, reqwest::Version::HTTP_2);
    assert_eq!(got.encoding(), None);
    assert_eq!(got.body, expected);
}

#[tokio::test]
async fn the_clients_weights_choose_among_the_routes_codings() {
    let a = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&routes_yaml(&a));
    let gw = Gateway::start(cfg, &yaml).await;
    for (path, accept, want) in [
        // The client's first choice is not offered: its next one is.
        ("/gzip", "br, gzip", Some("gzip")),
        ("/gzip", "zstd;q=1, br;q=0.9, gzip;q=0.1", Some("gzip")),
        ("/gzip", "br", None),
        ("/gzip", "gzip;q=0, *", None),
        ("/gzip", "*", Some("gzip")),
        // Weights decide; equal weights go to the route's order (zstd, br, gzip).
        ("/all", "gzip;q=0.5, br", Some("br")),
        ("/all", "gzip, deflate, br, zstd", Some("zstd")),
        ("/all", "gzip, br", Some("br")),
        ("/all", "identity", None),
    ] {
        let got = get(gw.http(), gw.url(&stream_path(path, 5000)), Some(accept)).await;
        assert_eq!(got.encoding(), want, "{path} {accept}");
        // Compressible either way: caches must key on Accept-Encoding.
        assert!(got.varies(), "{path} {accept}");
        assert_eq!(got.decoded(), pattern(5000), "{path} {accept}");
    }
}

#[tokio::test]
async fn what_must_not_be_compressed_goes_as_it_is() {
    let a = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&routes_yaml(&a));
    let gw = Gateway::start(cfg, &yaml).await;
    let http = gw.http();

    // Below min_size (the echo JSON without padding is a few hundred bytes).
    let got = get(http, gw.url("/all/small"), Some("gzip")).await;
    assert_eq!(got.encoding(), None);
    assert!(!got.varies());
    let length: usize = got.header("content-length").unwrap().parse().unwrap();
    assert!(length < 1024 && length == got.body.len(), "{length}");

    // A type outside content_types (the stream's own application/octet-stream, and PNG).
    for path in [
        "/all/__stream/5000".to_string(),
        "/all/__stream/5000?content_type=image/png".to_string(),
    ] {
        let got = get(http, gw.url(&path), Some("gzip")).await;
        assert_eq!(got.encoding(), None, "{path}");
        assert!(!got.varies(), "{path}");
        assert_eq!(got.body, pattern(5000), "{path}");
    }

    // A range answer (206).
    let got = fetch(
        http.get(gw.url("/all/__status/206"))
            .header("accept-encoding", "gzip")
            .header("range", "bytes=0-99")
            .header("x-pad", pad()),
    )
    .await;
    assert_eq!(got.status, 206);
    assert_eq!(got.encoding(), None);
    let echo: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(echo["headers"]["range"], "bytes=0-99");

    // Already compressed by the upstream: passed on once, not compressed again.
    let got = fetch(
        http.get(gw.url("/all/__gzip"))
            .header("accept-encoding", "br, gzip")
            .header("x-pad", pad()),
    )
    .await;
    assert_eq!(got.encoding(), Some("gzip"));
    let echo: serde_json::Value = serde_json::from_slice(&got.decoded()).unwrap();
    assert_eq!(echo["path"], "/all/__gzip");

    // A client that accepts no coding.
    let got = get(http, gw.url(&stream_path("/all", 5000)), None).await;
    assert_eq!(got.encoding(), None);
    assert_eq!(got.body, pattern(5000));

    // HEAD.
    let got = fetch(
        http.head(gw.url("/all/head"))
            .header("accept-encoding", "gzip")
            .header("x-pad", pad()),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.encoding(), None);
    assert!(got.body.is_empty());

    // A route without compression.
    let got = get(
        http,
        gw.url(&stream_path("/plain", 5000)),
        Some("gzip, br, zstd"),
    )
    .await;
    assert_eq!(got.encoding(), None);
    assert!(!got.varies());
    assert_eq!(got.body, pattern(5000));
}

#[tokio::test]
async fn defaults_apply_unless_a_route_overrides_them_or_says_false() {
    let a = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new();
    let yaml = cfg.render(&format!(
        "defaults:
  compression: {{algorithms: [gzip], min_size: 0}}
upstreams:
{}{}routes:
  - {{name: inherit, path_prefix: /inherit, upstream: a}}
  - {{name: override, path_prefix: /override, upstream: a, compression: {{algorithms: [zstd]}}}}
  - {{name: off, path_prefix: /off, upstream: a, compression: false}}
  - {{name: dead, path_prefix: /dead, upstream: dead}}
",
        upstream_line("a", &a.address()),
        upstream_line("dead", &format!("127.0.0.1:{}", free_port())),
    ));
    let gw = Gateway::start(cfg, &yaml).await;
    let accept = Some("gzip, zstd");
    for (prefix, want) in [
        ("/inherit", Some("gzip")),
        ("/override", Some("zstd")),
        ("/off", None),
    ] {
        let got = get(gw.http(), gw.url(&stream_path(prefix, 8000)), accept).await;
        assert_eq!(got.encoding(), want, "{prefix}");
        assert_eq!(got.decoded(), pattern(8000), "{prefix}");
    }
    // The default's min_size of 0: the small echo JSON is compressed on /inherit; the
    // override has its own (the 1 KiB default) and leaves it alone.
    let got = get(gw.http(), gw.url("/inherit/small"), accept).await;
    assert_eq!(got.encoding(), Some("gzip"));
    serde_json::from_slice::<serde_json::Value>(&got.decoded()).unwrap();
    let got = get(gw.http(), gw.url("/override/small"), accept).await;
    assert_eq!(got.encoding(), None);

    // Gateway-made answers are never compressed: an upstream that cannot be reached (the
    // route's step had switched compression on), and no route at all (`defaults:`).
    for (path, statuses) in [("/dead/x", &[502, 503][..]), ("/nowhere", &[404][..])] {
        let got = fetch(
            gw.http()
                .get(gw.url(path))
                .header("accept-encoding", "gzip"),
        )
        .await;
        assert!(statuses.contains(&got.status), "{path}: {}", got.status);
        assert_eq!(got.encoding(), None, "{path}");
        let error: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert!(error["error"].is_string(), "{path}: {error}");
    }
}

/// Polls `url` until its `Content-Encoding` is `want`; panics after 10 s.
async fn wait_for_encoding(gw: &Gateway, path: &str, want: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = get(gw.http(), gw.url(path), Some("gzip")).await;
        if got.encoding() == want {
            assert_eq!(got.decoded(), pattern(4000));
            return;
        }
        assert!(Instant::now() < deadline, "still {:?}", got.encoding());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn compression_is_turned_on_and_off_by_editing_the_file() {
    let a = TestUpstream::start("a").await;
    let cfg = GatewayConfig::new();
    let header = cfg.header();
    let with = |section: &str| {
        format!(
            "{header}upstreams:\n{}routes:\n  - {{name: r, path_prefix: /, upstream: a{section}}}\n",
            upstream_line("a", &a.address())
        )
    };
    let gw = Gateway::start(cfg, &with("")).await;
    let path = stream_path("", 4000);
    wait_for_encoding(&gw, &path, None).await;
    gw.rewrite_config(&with(", compression: {algorithms: [gzip]}"));
    wait_for_encoding(&gw, &path, Some("gzip")).await;
    gw.rewrite_config(&with(", compression: false"));
    wait_for_encoding(&gw, &path, None).await;
}

#[tokio::test]
async fn check_names_every_bad_setting_with_its_place() {
    let out = Gateway::check(
        "listeners: [{address: \"127.0.0.1:1\"}]
defaults:
  compression: {algorithms: []}
upstreams:
  - {name: a, targets: [{address: \"127.0.0.1:2\"}]}
routes:
  - name: r
    path_prefix: /
    upstream: a
    compression:
      algorithms: [gzip, br, gzip]
      level: {br: 12, zstd: 3}
      content_types: [json, 'text/html; charset=utf-8', '*/*', text/event-stream, image/png]
  - {name: s, path_prefix: /s, upstream: a, compression: {level: 10, content_types: []}}
",
    )
    .await;
    assert!(!out.success(), "{}", out.stderr);
    for needle in [
        "defaults.compression.algorithms: list at least one of zstd, br, gzip",
        "routes[0].compression.algorithms[2]: gzip is listed twice",
        "routes[0].compression.level.br: 12 is not a br level (1 to 11)",
        "routes[0].compression.level.zstd: zstd is not in `algorithms`",
        "routes[0].compression.content_types[0]: `json` is not a MIME type",
        "routes[0].compression.content_types[1]: `text/html; charset=utf-8`: leave the parameters out",
        "routes[0].compression.content_types[2]: `*/*` would match every type",
        "routes[0].compression.content_types[3]: `text/event-stream` is never compressed",
        "routes[0].compression.content_types[4]: Pingora's compressor leaves `image/png` alone",
        "routes[1].compression.level: 10 is not a gzip level (1 to 9)",
        "routes[1].compression.content_types: list at least one MIME type",
    ] {
        assert!(out.stderr.contains(needle), "{needle}\n{}", out.stderr);
    }

    // A coding the gateway does not offer is refused as the file is read.
    let out = Gateway::check(
        "listeners: [{address: \"127.0.0.1:1\"}]
upstreams:
  - {name: a, targets: [{address: \"127.0.0.1:2\"}]}
routes:
  - {name: r, path_prefix: /, upstream: a, compression: {algorithms: [deflate]}}
",
    )
    .await;
    assert!(!out.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("unknown variant `deflate`"),
        "{}",
        out.stderr
    );

    // And a good section passes.
    let out = Gateway::check(
        "listeners: [{address: \"127.0.0.1:1\"}]
defaults:
  compression: true
upstreams:
  - {name: a, targets: [{address: \"127.0.0.1:2\"}]}
routes:
  - name: r
    path_prefix: /
    upstream: a
    compression: {algorithms: [br, gzip], level: {br: 5}, min_size: 2 KiB, content_types: [text/*, application/json]}
",
    )
    .await;
    assert!(out.success(), "{}", out.stderr);
}
