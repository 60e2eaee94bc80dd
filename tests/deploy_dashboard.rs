//! The Grafana dashboard (`deploy/grafana/tollgate.json`, README "Grafana dashboard")
//! queries only what the gateway exports: every metric family named in a panel query or a
//! template variable appears in the scrape of a real gateway (Redis-backed limits, an API
//! key, a real upstream) after some traffic, and every label a query filters or groups by
//! is one of that family's labels (or one Prometheus adds: `instance`, `job`; or `le` of a
//! histogram bucket; or one the query makes with `label_replace`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::Value;
use support::*;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/tollgate.json");
const PEPPER_ENV: &str = "TG_DASHBOARD_TEST_PEPPER";
const PEPPER: &str = "pepper-for-the-dashboard-test";

/// Labels Prometheus attaches to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD)
        .unwrap_or_else(|e| panic!("cannot read {DASHBOARD}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, those nested in collapsed rows included; rows themselves too.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let top = dashboard["panels"]
        .as_array()
        .expect("the dashboard has a `panels` array");
    for panel in top {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

/// Every PromQL query: each panel target's `expr`, and each query variable's query.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in all_panels(dashboard).into_iter().filter(|p| !is_row(p)) {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((format!("panel {title:?}"), expr.to_string()));
            }
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let query = match &var["query"] {
            Value::String(s) => s.clone(),
            other => other["query"].as_str().unwrap_or_default().to_string(),
        };
        out.push((format!("variable {}", var["name"]), query));
    }
    out
}

/// `expr` with the contents of its string literals replaced by spaces (same length), so
/// that braces or words inside `"${1}xx"` are not read as PromQL.
fn blank_strings(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in expr.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                out.push('"');
                continue;
            }
            out.extend(std::iter::repeat_n(' ', c.len_utf8()));
        } else {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// The `tollgate_*` series names in `expr` (outside string literals).
fn series_names(expr: &str) -> BTreeSet<String> {
    let re = Regex::new(r"\btollgate_[a-z0-9_]+").unwrap();
    re.find_iter(&blank_strings(expr))
        .map(|m| m.as_str().to_string())
        .collect()
}

/// Labels `expr` filters on (`name{label=...}`) or groups by (`by (...)`, `without (...)`),
/// and the labels it makes itself (`label_replace(v, "dst", ...)`).
struct LabelUse {
    used: BTreeSet<String>,
    made: BTreeSet<String>,
}

fn label_use(expr: &str) -> LabelUse {
    let code = blank_strings(expr);
    let mut used = BTreeSet::new();
    let matchers = Regex::new(r"\{([^{}]*)\}").unwrap();
    let matcher = Regex::new(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)").unwrap();
    for m in matchers.captures_iter(&code) {
        used.extend(matcher.captures_iter(&m[1]).map(|c| c[1].to_string()));
    }
    let grouping = Regex::new(r"\b(by|without)\s*\(([^()]*)\)").unwrap();
    for g in grouping.captures_iter(&code) {
        used.extend(
            g[2].split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    // label_replace(v, "dst", "replacement", "src", "regex"): the first string literal
    // after the first argument (found by paren depth in the blanked text) is `dst`.
    let mut made = BTreeSet::new();
    for (start, _) in code.match_indices("label_replace(") {
        let mut depth = 0usize;
        let mut comma = None;
        for (i, c) in code[start + "label_replace(".len()..].char_indices() {
            match c {
                '(' | '{' | '[' => depth += 1,
                ')' | '}' | ']' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    comma = Some(start + "label_replace(".len() + i);
                    break;
                }
                _ => {}
            }
        }
        let comma = comma.unwrap_or_else(|| panic!("label_replace without arguments: {expr}"));
        let rest = &expr[comma + 1..];
        let dst = rest
            .split('"')
            .nth(1)
            .unwrap_or_else(|| panic!("label_replace without a destination label: {expr}"));
        made.insert(dst.to_string());
    }
    LabelUse { used, made }
}

/// What a scrape exposes: family name → type, and family name → label names seen.
struct Scrape {
    types: BTreeMap<String, String>,
    labels: BTreeMap<String, BTreeSet<String>>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    types.insert(name.to_string(), kind.to_string());
                }
            }
        }
        let mut scrape = Scrape {
            types,
            labels: BTreeMap::new(),
        };
        let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*""#).unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, labels)) = line.split_once('{') else {
                continue;
            };
            let family = scrape.family_of(name);
            let seen = scrape.labels.entry(family).or_default();
            seen.extend(label.captures_iter(labels).map(|c| c[1].to_string()));
        }
        scrape
    }

    /// The family a series name belongs to: a histogram's `_bucket`, `_sum` and `_count`
    /// series belong to the histogram; any other name is its own family.
    fn family_of(&self, series: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = series.strip_suffix(suffix) {
                if self.types.get(base).is_some_and(|t| t == "histogram") {
                    return base.to_string();
                }
            }
        }
        series.to_string()
    }

    fn is_histogram(&self, family: &str) -> bool {
        self.types.get(family).is_some_and(|t| t == "histogram")
    }
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_with_a_query_on_every_panel() {
    let d = dashboard();
    assert!(d["title"].is_string(), "no title");
    assert!(d["uid"].is_string(), "no uid");
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");

    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` variable"))
    };
    let datasource = var("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let instance = var("instance");
    assert_eq!(instance["type"], "query");
    assert_eq!(instance["datasource"]["uid"], "${datasource}");

    let panels = all_panels(&d);
    let mut ids = BTreeSet::new();
    let mut queried = 0;
    for panel in &panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title:?}: no id"));
        assert!(ids.insert(id), "{title:?}: id {id} is used twice");
        for key in ["h", "w", "x", "y"] {
            assert!(
                panel["gridPos"][key].is_u64(),
                "{title:?}: no gridPos.{key}"
            );
        }
        if is_row(panel) {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title:?}: not on the datasource variable"
        );
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title:?}: no `targets`"));
        assert!(!targets.is_empty(), "{title:?}: no targets");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title:?}: a target without `expr`: {target}"));
            assert!(
                !series_names(expr).is_empty(),
                "{title:?}: {expr} queries no tollgate metric"
            );
            assert!(
                expr.contains("$instance"),
                "{title:?}: {expr} ignores the instance variable"
            );
            assert!(target["refId"].is_string(), "{title:?}: no refId");
            queried += 1;
        }
    }
    assert!(queried >= 20, "only {queried} queries");
}

/// An API key for the test consumer, and its stored hash.
fn new_key() -> (String, String) {
    let key =
        tollgate::auth::api_key::generate(&ring::rand::SystemRandom::new()).expect("random key");
    let hash = tollgate::auth::api_key::KeyHasher::new(PEPPER.as_bytes())
        .hash(&key.secret)
        .to_hex();
    (key.secret, hash)
}

fn config_yaml(
    cfg: &GatewayConfig,
    up: &TestUpstream,
    redis: &RedisServer,
    hash: &str,
    extra_route: &str,
) -> String {
    cfg.render(&format!(
        "auth:\n  api_key: {{pepper_env: {PEPPER_ENV}}}\n\
         plans:\n  - {{name: gold, limits: [{{requests: 3, per: 1h}}]}}\n\
         consumers:\n  - {{id: alice, plan: gold, keys: [{{id: alice-key, hash: {hash}}}]}}\n\
         rate_limit:\n  redis: {{urls: [\"{redis}\"], timeout: 5s, breaker_failures: 1000}}\n\
         upstreams:\n  - {{name: up, targets: [{{address: \"{up}\"}}]}}\n\
         routes:\n  - {{name: api, path_prefix: /api, upstream: up, auth: required}}\n{extra_route}",
        redis = redis.url(),
        up = up.address(),
    ))
}

async fn get(gw: &Gateway, path: &str, key: &str) -> u16 {
    gw.http()
        .get(gw.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_the_dashboard_queries_is_exported() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start("up").await;
    let (secret, hash) = new_key();
    let cfg = GatewayConfig::new().with_env(PEPPER_ENV, PEPPER);
    let first = config_yaml(&cfg, &up, &redis, &hash, "");
    let second = config_yaml(
        &cfg,
        &up,
        &redis,
        &hash,
        "  - {name: other, path_prefix: /other, upstream: up}\n",
    );
    let gw = Gateway::start(cfg, &first).await;

    // Traffic: 3 allowed by the plan, then limited; a request no route matches.
    let statuses: Vec<u16> = {
        let mut s = Vec::new();
        for _ in 0..4 {
            s.push(get(&gw, "/api/x", &secret).await);
        }
        s
    };
    assert_eq!(statuses, [200, 200, 200, 429], "plan of 3 per hour");
    assert_eq!(get(&gw, "/nowhere", &secret).await, 404);

    // A reload.
    gw.rewrite_config(&second);
    gw.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = gw.metrics_text().await;
        if metric(
            &text,
            "tollgate_config_reloads_total",
            &[("result", "success")],
        ) >= Some(1.0)
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no successful reload\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(metric(&text, "tollgate_config_generation", &[]), Some(2.0));
    let scrape = Scrape::parse(&text);

    let d = dashboard();
    let mut missing = BTreeMap::<String, BTreeSet<String>>::new();
    let mut bad = Vec::new();
    let mut used_families = BTreeSet::new();
    for (place, expr) in queries(&d) {
        let names = series_names(&expr);
        let mut allowed: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        for name in &names {
            let family = scrape.family_of(name);
            if !scrape.types.contains_key(&family) {
                missing.entry(family).or_default().insert(place.clone());
                continue;
            }
            used_families.insert(family.clone());
            if scrape.is_histogram(&family) {
                if name == &family {
                    bad.push(format!(
                        "{place}: {name} is a histogram; query its _bucket, _sum or _count"
                    ));
                }
                if name.ends_with("_bucket") {
                    allowed.insert("le".into());
                }
            }
            allowed.extend(scrape.labels.get(&family).into_iter().flatten().cloned());
        }
        let labels = label_use(&expr);
        allowed.extend(labels.made);
        for label in labels.used.difference(&allowed) {
            bad.push(format!(
                "{place}: label `{label}` is not a label of {names:?}: {expr}"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "metric families the dashboard queries but the gateway does not export \
         (family → where used): {missing:#?}"
    );
    assert!(bad.is_empty(), "wrong queries:\n{}", bad.join("\n"));

    // The dashboard covers what the brief asks for.
    for family in [
        "tollgate_requests_total",
        "tollgate_request_duration_seconds",
        "tollgate_upstream_duration_seconds",
        "tollgate_upstream_targets",
        "tollgate_ratelimit_decisions_total",
        "tollgate_requests_in_flight",
        "tollgate_client_connections",
        "tollgate_connections_refused_total",
        "tollgate_config_reloads_total",
        "tollgate_config_generation",
        "tollgate_usage_pending_rows",
        "tollgate_usage_dropped_total",
        "tollgate_access_log_dropped_total",
        "tollgate_key_lookups_total",
    ] {
        assert!(
            used_families.contains(family),
            "the dashboard has no panel on {family}"
        );
    }
}
