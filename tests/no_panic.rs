//! Nothing panics on input: arbitrary request lines, paths, hosts, header names and values
//! thrown at everything the proxy runs on request data before it is answered (the
//! canonicaliser, the request-target and Host parser, the router, the client-IP parser and
//! the credential extractor, and the edge steps that rewrite the upstream request), built
//! from a real config. Results must also be stable: the
//! canonical form of a canonical path is itself.

use pingora::http::RequestHeader;
use proptest::prelude::*;
use std::net::IpAddr;
use std::sync::LazyLock;
use tollgate::canonical;
use tollgate::runtime::Runtime;

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    let yaml = "\
listeners: [{address: \"127.0.0.1:1\"}]
auth:
  trusted_proxies: [127.0.0.0/8, \"::1\"]
  client_ip_header: x-forwarded-for
  api_key: {query_param: api_key}
upstreams:
  - {name: up, targets: [{address: \"127.0.0.1:2\"}]}
routes:
  - {name: root, path_prefix: /, upstream: up}
  - {name: admin, path_prefix: /admin, upstream: up, auth: required, case_insensitive: true}
  - {name: hosted, path_prefix: /api, hosts: [\"*.example.com\", api.test], upstream: up, methods: [GET]}
  - name: edge
    path_prefix: /edge
    upstream: up
    strip_prefix: true
    rewrite: {pattern: \"^/(?P<a>[^/]*)/(.*)$\", replace: \"/v2/${a}/$2\"}
    headers:
      request: {set: {X-Who: \"${consumer_id}@${client_ip}\", X-Trace: \"${request_id}/${route}\"}, remove: [Cookie]}
    cors: {allow_origins: [\"https://*.example.com\"]}
    ip_rules: {deny: [\"10.0.0.0/8\", \"2001:db8::/32\"]}
";
    let config = tollgate::config::parse(yaml, std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("test config: {e:?}"));
    Runtime::build(config, 1, None, None).expect("test runtime")
});

/// Bytes a request target might hold, biased towards the interesting ones.
fn target_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"/".to_vec()),
        Just(b"%".to_vec()),
        Just(b"%2e".to_vec()),
        Just(b"%2F".to_vec()),
        Just(b"..".to_vec()),
        Just(b".".to_vec()),
        Just(b";".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"admin".to_vec()),
        Just(b"/edge/".to_vec()),
        Just(b"http://".to_vec()),
        Just(b"[".to_vec()),
        Just(b":".to_vec()),
        Just(b"?".to_vec()),
        Just(b"#".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..4),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"[".to_vec()),
        Just(b"]".to_vec()),
        Just(b":".to_vec()),
        Just(b"::1".to_vec()),
        Just(b".".to_vec()),
        Just(b",".to_vec()),
        Just(b"Bearer ".to_vec()),
        Just(b"for=".to_vec()),
        Just(b"1.2.3.4".to_vec()),
        Just(b"a.example.com".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..4),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("host".to_string()),
        Just("x-forwarded-for".to_string()),
        Just("forwarded".to_string()),
        Just("authorization".to_string()),
        Just("x-api-key".to_string()),
        Just("x-consumer_id".to_string()),
        "[a-zA-Z0-9_-]{1,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn canonical_paths_are_stable(raw in target_bytes()) {
        let text = String::from_utf8_lossy(&raw);
        if let Ok((once, _)) = canonical::path(&text) {
            let (twice, _) = canonical::path(&once).expect("a canonical path is canonical");
            prop_assert_eq!(&once, &twice);
            prop_assert!(once.starts_with('/'));
            prop_assert!(!once.contains("//"));
            prop_assert!(!once.split('/').any(|s| s == "." || s == ".."));
        }
    }

    #[test]
    fn hosts_never_panic_and_are_stable(raw in header_bytes()) {
        let text = String::from_utf8_lossy(&raw);
        if let Ok(Some(a)) = canonical::authority(&text) {
            let again = canonical::authority(&a.host).expect("a canonical host parses");
            prop_assert_eq!(again.map(|b| b.host.into_owned()), Some(a.host.into_owned()));
        }
    }

    #[test]
    fn whole_requests_never_panic(
        method in prop_oneof![Just("GET"), Just("POST"), Just("OPTIONS"), Just("CONNECT")],
        target in target_bytes(),
        headers in proptest::collection::vec((header_name(), header_bytes()), 0..6),
        peer in any::<[u8; 4]>(),
    ) {
        let Ok(mut req) = RequestHeader::build(method, &target, None) else {
            return Ok(());
        };
        for (name, value) in headers {
            if let Ok(value) = http::HeaderValue::from_bytes(&value) {
                let _ = req.append_header(name, value);
            }
        }
        let runtime = &*RUNTIME;
        let _ = runtime.auth.client_ip(IpAddr::from(peer), &req);
        let _ = runtime.auth.client_ip("127.0.0.1".parse().unwrap(), &req);
        let _ = runtime.auth.credential(&req);
        let _ = tollgate::features::cors::route_method(&req);
        if let Ok(t) = tollgate::proxy::target::parse(&req) {
            let host = t.authority.as_ref().map(|a| a.host.as_ref());
            let found = runtime.router.find(&t.path, host, &req.method);
            prop_assert!(t.path.starts_with('/'));
            // The upstream-request steps (rewrite, header rules) on whatever was routed.
            if let tollgate::router::RouteMatch::Found(route) = found {
                let request_id = http::HeaderValue::from_static("rid");
                let facts = tollgate::pipeline::Facts {
                    request_id: &request_id,
                    client_ip: Some(IpAddr::from(peer)),
                    consumer: Some("c-1"),
                    route: &route.spec.name,
                    tls: false,
                };
                let mut upstream = req.clone();
                let _ = route.pipeline.upstream_request(&req, &mut upstream, &facts);
            }
        }
    }
}
