//! The deployment files under `deploy/` (issue 16), checked without a container engine or a
//! cluster: every tollgate configuration there passes `tollgate check`; the compose file has the
//! services it should and every file it mounts exists; the Kubernetes manifests pass the
//! Kubernetes 1.30 schemas (`kubernetes-validate --strict`, installed by
//! `scripts/ensure-deps.sh test`) and refer to each other consistently.

use std::collections::{BTreeMap, BTreeSet};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.30.0";

/// Dummy values for the environment variables the configurations name (`*_env`).
const DUMMY_ENV: &[(&str, &str)] = &[
    (
        "TOLLGATE_DATABASE_URL",
        "postgres://tollgate@127.0.0.1:5432/tollgate",
    ),
    ("TOLLGATE_KEY_PEPPER", "dummy-pepper-0123456789abcdef"),
    (
        "TOLLGATE_ADMIN_TOKENS",
        "9c1e4b7a2d5f8c0e3b6a9d2f5c8e1b4a7d0f3c6e9b2a5d8f1c4e7b0a3d6f9c2e",
    ),
    (
        "TOLLGATE_ADMIN_READ_ONLY_TOKENS",
        "2b5e8a1d4c7f0b3e6a9d2c5f8b1e4a7d0c3f6b9e2a5d8c1f4b7e0a3d6c9f2b5e",
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Every YAML document of a file (`---` separated).
fn documents(text: &str, place: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{place}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

fn str_at<'a>(v: &'a Value, path: &str, place: &str) -> &'a str {
    get(v, path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{place}: no string at {path}"))
}

fn seq<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_sequence)
        .map_or(&[], |s| s.as_slice())
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A tollgate configuration: a mapping with `listeners`.
fn is_tollgate_config(v: &Value) -> bool {
    v.get("listeners").is_some_and(Value::is_sequence)
}

/// The environment variables a tollgate configuration names (`url_env`, `pepper_env`, ...).
fn env_names(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                match (k.as_str(), v.as_str()) {
                    (Some(k), Some(name)) if k.ends_with("_env") => {
                        out.insert(name.to_string());
                    }
                    _ => env_names(v, out),
                }
            }
        }
        Value::Sequence(s) => s.iter().for_each(|v| env_names(v, out)),
        _ => {}
    }
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{address:?} has no port"))
}

fn seconds(duration: &str) -> u64 {
    let d = duration.trim();
    if let Some(s) = d.strip_suffix("ms") {
        return s.parse::<u64>().unwrap().div_ceil(1000);
    }
    if let Some(s) = d.strip_suffix('s') {
        return s.parse().unwrap();
    }
    if let Some(m) = d.strip_suffix('m') {
        return m.parse::<u64>().unwrap() * 60;
    }
    panic!("{duration:?}: not a duration this test reads")
}

/// Runs `tollgate check` on one configuration's text, with the dummy environment.
///
/// Upstream targets are resolved when a file loads, and a deployment's targets are service
/// names (`upstream:9000`, `app:8080`) that resolve only inside that deployment's network: a
/// target that does not resolve here is checked as `127.0.0.1` with its port.
fn tollgate_check(text: &str, place: &str) {
    let config: Value = serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{place}: {e}"));
    let mut names = BTreeSet::new();
    env_names(&config, &mut names);
    let dummy: BTreeMap<_, _> = DUMMY_ENV.iter().copied().collect();
    for name in &names {
        assert!(
            dummy.contains_key(name.as_str()),
            "{place}: names ${name}, which this test has no dummy value for (DUMMY_ENV)"
        );
    }
    let mut checked = text.to_string();
    for upstream in seq(&config, "upstreams") {
        for target in seq(upstream, "targets") {
            let address = str_at(target, "address", place);
            if address.to_socket_addrs().is_err() {
                checked = checked.replace(address, &format!("127.0.0.1:{}", port_of(address)));
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tollgate.yaml");
    std::fs::write(&file, checked).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["check", "-c"]).arg(&file);
    for (k, v) in DUMMY_ENV {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tollgate check");
    assert!(
        out.status.success(),
        "{place} fails `tollgate check`:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every tollgate configuration under deploy/: files with `listeners`, and ConfigMap entries
/// holding one. Returns (place, text, parsed).
fn tollgate_configs() -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for path in files_under(&root().join("deploy")) {
        if !is_yaml(&path) {
            continue;
        }
        let place = path.strip_prefix(root()).unwrap().display().to_string();
        let text = read(&path);
        for doc in documents(&text, &place) {
            if is_tollgate_config(&doc) {
                out.push((place.clone(), text.clone(), doc));
            } else if doc.get("kind").and_then(Value::as_str) == Some("ConfigMap") {
                for (key, value) in string_map(doc.get("data")) {
                    if let Ok(inner) = serde_yaml::from_str::<Value>(&value) {
                        if is_tollgate_config(&inner) {
                            out.push((format!("{place}: data.{key}"), value, inner));
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_tollgate_config_under_deploy_passes_check() {
    let configs = tollgate_configs();
    let places: Vec<_> = configs.iter().map(|(p, _, _)| p.as_str()).collect();
    assert!(
        places.contains(&"deploy/compose/tollgate/tollgate.yaml")
            && places.contains(&"deploy/kubernetes/configmap.yaml: data.tollgate.yaml"),
        "configs found: {places:?}"
    );
    for (place, text, _) in &configs {
        tollgate_check(text, place);
    }
}

// ---------------------------------------------------------------------------------------------
// Compose

fn compose_dir() -> PathBuf {
    root().join("deploy/compose")
}

fn compose() -> Value {
    let path = compose_dir().join("compose.yaml");
    serde_yaml::from_str(&read(&path)).unwrap_or_else(|e| panic!("compose.yaml: {e}"))
}

/// A service's bind mounts: (host path, container path).
fn bind_mounts(service: &Value, name: &str, named: &BTreeSet<String>) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for volume in seq(service, "volumes") {
        let (source, target) = match volume {
            Value::String(s) => {
                let mut parts = s.splitn(3, ':');
                let source = parts.next().unwrap().to_string();
                let target = parts
                    .next()
                    .unwrap_or_else(|| panic!("{name}: volume {s:?} has no target"))
                    .to_string();
                (source, target)
            }
            v => (
                str_at(v, "source", name).to_string(),
                str_at(v, "target", name).to_string(),
            ),
        };
        if source.starts_with('.') || source.starts_with('/') {
            out.push((compose_dir().join(&source), target));
        } else {
            assert!(
                named.contains(&source),
                "{name}: volume {source:?} is neither a path nor a declared named volume"
            );
        }
    }
    out
}

#[test]
fn compose_file_has_the_stack_and_every_mounted_file_exists() {
    let compose = compose();
    let services = compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("compose.yaml: services");
    let names: BTreeSet<_> = services.keys().filter_map(Value::as_str).collect();
    for want in [
        "gateway-1",
        "gateway-2",
        "redis",
        "postgres",
        "upstream",
        "prometheus",
        "grafana",
    ] {
        assert!(names.contains(want), "compose.yaml: no service {want}");
    }
    let named: BTreeSet<String> = compose
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();

    for (name, service) in services {
        let name = name.as_str().unwrap();
        assert!(
            service.get("image").is_some() || service.get("build").is_some(),
            "compose.yaml: service {name} has neither image nor build"
        );
        if let Some(context) = get(service, "build.context").and_then(Value::as_str) {
            let context = compose_dir().join(context);
            let dockerfile = get(service, "build.dockerfile")
                .and_then(Value::as_str)
                .unwrap_or("Dockerfile");
            assert!(
                context.join(dockerfile).is_file(),
                "compose.yaml: {name}: no {dockerfile} in {}",
                context.display()
            );
        }
        for (source, _) in bind_mounts(service, name, &named) {
            assert!(
                source.exists(),
                "compose.yaml: {name} mounts {}, which does not exist",
                source.display()
            );
        }
    }

    // The gateways: the mounted config is the one checked above, and the environment gives
    // every variable it names.
    let prometheus_targets: BTreeSet<String> = {
        let prom: Value = serde_yaml::from_str(&read(&compose_dir().join("prometheus.yml")))
            .expect("prometheus.yml");
        seq(&prom, "scrape_configs")
            .iter()
            .flat_map(|job| seq(job, "static_configs"))
            .flat_map(|sc| seq(sc, "targets"))
            .filter_map(|t| t.as_str().map(String::from))
            .collect()
    };
    for gateway in ["gateway-1", "gateway-2"] {
        let service = &services[gateway];
        let args: Vec<&str> = seq(service, "command")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let at = args.iter().position(|a| *a == "-c").expect("command -c");
        let in_container = args[at + 1];
        let mounts = bind_mounts(service, gateway, &named);
        let file = mounts
            .iter()
            .find_map(|(src, dst)| {
                Path::new(in_container)
                    .strip_prefix(dst)
                    .ok()
                    .map(|rest| src.join(rest))
            })
            .unwrap_or_else(|| panic!("{gateway}: {in_container} is not in a mounted folder"));
        let config: Value = serde_yaml::from_str(&read(&file)).unwrap();
        let mut needed = BTreeSet::new();
        env_names(&config, &mut needed);
        let env = string_map(service.get("environment"));
        for name in needed {
            assert!(
                env.contains_key(&name),
                "{gateway}: ${name} (named by {}) is not in its environment",
                file.display()
            );
        }
        let metrics_port = port_of(str_at(&config, "metrics.address", gateway));
        assert!(
            prometheus_targets.contains(&format!("{gateway}:{metrics_port}")),
            "prometheus.yml does not scrape {gateway}:{metrics_port}: {prometheus_targets:?}"
        );
        // The demo upstream the config routes to is the compose service.
        for upstream in seq(&config, "upstreams") {
            for target in seq(upstream, "targets") {
                let address = str_at(target, "address", gateway);
                let host = address.rsplit_once(':').unwrap().0;
                assert!(
                    names.contains(host),
                    "{}: target {address} is no compose service",
                    file.display()
                );
            }
        }
    }
    let upstream_cmd: Vec<&str> = seq(&services["upstream"], "command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(upstream_cmd[..3], ["echo", "--listen", "0.0.0.0:9000"]);

    // Grafana: the Prometheus datasource and a dashboard provider reading deploy/grafana/.
    let grafana = bind_mounts(&services["grafana"], "grafana", &named);
    let provisioning = grafana
        .iter()
        .find(|(_, dst)| dst == "/etc/grafana/provisioning")
        .map(|(src, _)| src.clone())
        .expect("grafana: provisioning mount");
    let datasources: Value =
        serde_yaml::from_str(&read(&provisioning.join("datasources/prometheus.yaml"))).unwrap();
    let ds = &seq(&datasources, "datasources")[0];
    assert_eq!(str_at(ds, "type", "datasource"), "prometheus");
    assert_eq!(str_at(ds, "url", "datasource"), "http://prometheus:9090");
    let providers: Value =
        serde_yaml::from_str(&read(&provisioning.join("dashboards/tollgate.yaml"))).unwrap();
    let dashboards_path = str_at(&seq(&providers, "providers")[0], "options.path", "provider");
    let (src, _) = grafana
        .iter()
        .find(|(_, dst)| dst == dashboards_path)
        .expect("grafana: the dashboard provider's folder is mounted");
    assert_eq!(
        src.canonicalize().unwrap(),
        root().join("deploy/grafana").canonicalize().unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

fn kubernetes_files() -> Vec<PathBuf> {
    let files: Vec<_> = files_under(&root().join("deploy/kubernetes"))
        .into_iter()
        .filter(|p| is_yaml(p))
        .collect();
    assert!(!files.is_empty(), "no manifests under deploy/kubernetes");
    files
}

#[test]
fn kubernetes_manifests_pass_the_schemas() {
    let files = kubernetes_files();
    let out = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            KUBERNETES_VERSION,
        ])
        .args(&files)
        .output()
        .expect("python3 (scripts/ensure-deps.sh test installs it and kubernetes-validate)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named kubernetes_validate"),
        "kubernetes-validate is missing: `scripts/ensure-deps.sh test` (or `make test`) installs it\n{text}"
    );
    assert!(out.status.success(), "kubernetes-validate:\n{text}");
    let documents: usize = files
        .iter()
        .map(|f| documents(&read(f), &f.display().to_string()).len())
        .sum();
    assert_eq!(
        text.matches(" passed for resource ").count(),
        documents,
        "every document validated:\n{text}"
    );
}

/// Every manifest by (kind, name).
fn manifests() -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for file in kubernetes_files() {
        let place = file.display().to_string();
        for doc in documents(&read(&file), &place) {
            let kind = str_at(&doc, "kind", &place).to_string();
            let name = str_at(&doc, "metadata.name", &place).to_string();
            assert!(
                out.insert((kind.clone(), name.clone()), doc).is_none(),
                "{kind} {name} twice"
            );
        }
    }
    out
}

fn find<'a>(all: &'a BTreeMap<(String, String), Value>, kind: &str, name: &str) -> &'a Value {
    all.get(&(kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("no {kind} named {name} under deploy/kubernetes"))
}

fn of_kind<'a>(
    all: &'a BTreeMap<(String, String), Value>,
    kind: &'a str,
) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
    all.iter()
        .filter(move |((k, _), _)| k == kind)
        .map(|((_, n), v)| (n.as_str(), v))
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_refer_to_each_other() {
    let all = manifests();
    let deployment = find(&all, "Deployment", "tollgate");
    let pod = get(deployment, "spec.template").unwrap();
    let labels = string_map(get(pod, "metadata.labels"));
    assert!(selects(
        &string_map(get(deployment, "spec.selector.matchLabels")),
        &labels
    ));
    assert_eq!(
        get(deployment, "spec.replicas").and_then(Value::as_u64),
        Some(2)
    );

    let containers = seq(pod, "spec.containers");
    let container = containers
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some("tollgate"))
        .expect("container tollgate");
    let ports: BTreeMap<String, u64> = seq(container, "ports")
        .iter()
        .map(|p| {
            (
                str_at(p, "name", "port").to_string(),
                get(p, "containerPort").and_then(Value::as_u64).unwrap(),
            )
        })
        .collect();

    // The config: from a ConfigMap that exists, mounted as a folder (no subPath: a subPath
    // never sees updates), holding the file the container is started with.
    let args: Vec<&str> = seq(container, "args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_path = args[args.iter().position(|a| *a == "-c").expect("-c") + 1];
    let volumes: BTreeMap<&str, &Value> = seq(pod, "spec.volumes")
        .iter()
        .map(|v| (str_at(v, "name", "volume"), v))
        .collect();
    let mut config_text = None;
    for mount in seq(container, "volumeMounts") {
        let volume = volumes[str_at(mount, "name", "volumeMount")];
        let Some(cm) = get(volume, "configMap.name").and_then(Value::as_str) else {
            continue;
        };
        assert!(
            mount.get("subPath").is_none(),
            "the ConfigMap is mounted with subPath"
        );
        let data = string_map(get(find(&all, "ConfigMap", cm), "data"));
        let dir = str_at(mount, "mountPath", "volumeMount");
        if let Ok(key) = Path::new(config_path).strip_prefix(dir) {
            config_text = data.get(key.to_str().unwrap()).cloned();
        }
    }
    let config_text =
        config_text.unwrap_or_else(|| panic!("{config_path} is not a key of a mounted ConfigMap"));
    let config: Value = serde_yaml::from_str(&config_text).unwrap();
    assert!(
        get(pod, "metadata.annotations")
            .and_then(Value::as_mapping)
            .is_some_and(|m| m
                .keys()
                .any(|k| k.as_str().is_some_and(|k| k.ends_with("config-hash")))),
        "the pod template has a config-hash annotation"
    );

    // The container's ports are the config's.
    let listener = str_at(&seq(&config, "listeners")[0], "address", "listeners[0]");
    assert_eq!(ports.get("http").copied(), Some(port_of(listener).into()));
    assert_eq!(
        ports.get("metrics").copied(),
        Some(port_of(str_at(&config, "metrics.address", "config")).into())
    );
    assert_eq!(
        ports.get("admin").copied(),
        Some(port_of(str_at(&config, "admin.address", "config")).into())
    );

    // Secrets: every variable the config names comes from a Secret key that exists, never a
    // literal value.
    let mut needed = BTreeSet::new();
    env_names(&config, &mut needed);
    let env: BTreeMap<&str, &Value> = seq(container, "env")
        .iter()
        .map(|e| (str_at(e, "name", "env"), e))
        .collect();
    for name in &needed {
        let e = env.get(name.as_str()).unwrap_or_else(|| {
            panic!("${name} (named by the config) is not in the container's env")
        });
        assert!(e.get("value").is_none(), "${name} is inline");
        let secret = str_at(e, "valueFrom.secretKeyRef.name", name);
        let key = str_at(e, "valueFrom.secretKeyRef.key", name);
        let s = find(&all, "Secret", secret);
        let keys: BTreeSet<String> = string_map(s.get("stringData"))
            .into_keys()
            .chain(string_map(s.get("data")).into_keys())
            .collect();
        assert!(keys.contains(key), "Secret {secret} has no key {key}");
    }

    // Probes: the gateway's health path on a named container port.
    let health = get(&config, "server.health_path")
        .and_then(Value::as_str)
        .unwrap_or("/health");
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let Some(p) = container.get(probe) else {
            assert_ne!(probe, "readinessProbe");
            assert_ne!(probe, "livenessProbe");
            continue;
        };
        let port = str_at(p, "httpGet.port", probe);
        assert!(
            ports.contains_key(port),
            "{probe}: no container port {port}"
        );
        assert_eq!(port, "http", "{probe} probes the proxy listener");
        assert_eq!(str_at(p, "httpGet.path", probe), health);
    }

    // Shutdown: preStop sleep + grace_period + graceful_shutdown_timeout fit the pod's grace.
    let sleep: u64 = seq(container, "lifecycle.preStop.exec.command")
        .iter()
        .filter_map(Value::as_str)
        .next_back()
        .and_then(|s| s.parse().ok())
        .expect("preStop: sleep N");
    let grace = get(&config, "server.grace_period")
        .and_then(Value::as_str)
        .map_or(5, seconds);
    let shutdown = get(&config, "server.graceful_shutdown_timeout")
        .and_then(Value::as_str)
        .map_or(30, seconds);
    let termination = get(pod, "spec.terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap();
    assert!(
        termination >= sleep + grace + shutdown,
        "terminationGracePeriodSeconds {termination} < preStop {sleep} + {grace} + {shutdown}"
    );

    // Hardening.
    let sc = container.get("securityContext").expect("securityContext");
    assert_eq!(
        get(sc, "readOnlyRootFilesystem").and_then(Value::as_bool),
        Some(true)
    );
    assert_eq!(
        get(sc, "allowPrivilegeEscalation").and_then(Value::as_bool),
        Some(false)
    );
    assert_eq!(
        seq(sc, "capabilities.drop")
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>(),
        ["ALL"]
    );
    assert_eq!(
        get(pod, "spec.securityContext.runAsNonRoot").and_then(Value::as_bool),
        Some(true)
    );
    for r in [
        "requests.cpu",
        "requests.memory",
        "limits.cpu",
        "limits.memory",
    ] {
        assert!(
            get(container, &format!("resources.{r}")).is_some(),
            "resources.{r}"
        );
    }

    // Services select the gateway's pods and target its named ports; the Prometheus
    // annotation names the metrics port.
    let services: Vec<_> = of_kind(&all, "Service").collect();
    assert!(!services.is_empty());
    for (name, service) in services {
        assert!(
            selects(&string_map(get(service, "spec.selector")), &labels),
            "Service {name} does not select the Deployment's pods"
        );
        for port in seq(service, "spec.ports") {
            let target = str_at(port, "targetPort", name);
            assert!(
                ports.contains_key(target),
                "Service {name}: no container port {target}"
            );
        }
        if let Some(p) = get(service, "metadata.annotations")
            .and_then(|a| a.get("prometheus.io/port"))
            .and_then(Value::as_str)
        {
            assert_eq!(p.parse::<u64>().ok(), ports.get("metrics").copied());
        }
    }
    let proxy = find(&all, "Service", "tollgate");
    let annotations = string_map(get(proxy, "metadata.annotations"));
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    let targets: BTreeSet<&str> = seq(proxy, "spec.ports")
        .iter()
        .map(|p| str_at(p, "targetPort", "tollgate"))
        .collect();
    assert!(
        targets.contains("http") && targets.contains("metrics"),
        "{targets:?}"
    );

    // The autoscaler scales this Deployment on CPU; the budget and the policy select its pods.
    let hpa = find(&all, "HorizontalPodAutoscaler", "tollgate");
    assert_eq!(str_at(hpa, "spec.scaleTargetRef.kind", "hpa"), "Deployment");
    assert_eq!(str_at(hpa, "spec.scaleTargetRef.name", "hpa"), "tollgate");
    assert!(seq(hpa, "spec.metrics")
        .iter()
        .any(|m| get(m, "resource.name").and_then(Value::as_str) == Some("cpu")));
    let pdb = find(&all, "PodDisruptionBudget", "tollgate");
    assert!(selects(
        &string_map(get(pdb, "spec.selector.matchLabels")),
        &labels
    ));
    let policy = find(&all, "NetworkPolicy", "tollgate");
    assert!(selects(
        &string_map(get(policy, "spec.podSelector.matchLabels")),
        &labels
    ));
    let mut open = Vec::new();
    for rule in seq(policy, "spec.ingress") {
        for port in seq(rule, "ports") {
            let name = str_at(port, "port", "NetworkPolicy ingress port");
            assert!(
                ports.contains_key(name),
                "NetworkPolicy: no container port {name}"
            );
            if rule.get("from").is_none() {
                open.push(name);
            }
        }
    }
    assert_eq!(open, ["http"], "only the proxy port is open to everyone");
    let egress_ports: BTreeSet<u64> = seq(policy, "spec.egress")
        .iter()
        .flat_map(|r| seq(r, "ports"))
        .filter_map(|p| get(p, "port").and_then(Value::as_u64))
        .collect();
    let mut wanted = vec![53, 5432];
    for url in seq(&config, "rate_limit.redis.urls") {
        wanted.push(port_of(url.as_str().unwrap()).into());
    }
    for upstream in seq(&config, "upstreams") {
        for target in seq(upstream, "targets") {
            wanted.push(port_of(str_at(target, "address", "target")).into());
        }
    }
    for port in wanted {
        assert!(
            egress_ports.contains(&port),
            "NetworkPolicy: no egress to port {port}"
        );
    }
}
