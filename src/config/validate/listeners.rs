//! `listeners:`: addresses and TLS certificates.

use super::*;

pub(super) fn listeners(raw: Vec<RawListener>, base: &Path, p: &mut Problems) -> Vec<Listener> {
    if raw.is_empty() {
        p.push("listeners", "at least one listener is needed");
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, l) in raw.into_iter().enumerate() {
        let place = format!("listeners[{i}]");
        let Some(address) = socket_addr(&l.address, &format!("{place}.address"), p) else {
            continue;
        };
        if !seen.insert(address) {
            p.push(
                format!("{place}.address"),
                format!("{address} is listed twice"),
            );
        }
        let tls = l.tls.map(|t| {
            if t.certificates.is_empty() {
                p.push(
                    format!("{place}.tls.certificates"),
                    "at least one certificate is needed",
                );
            }
            let certificates = t
                .certificates
                .into_iter()
                .enumerate()
                .map(|(j, c)| {
                    let cplace = format!("{place}.tls.certificates[{j}]");
                    CertificateSpec {
                        cert: existing_file(base, &c.cert, &format!("{cplace}.cert"), p),
                        key: existing_file(base, &c.key, &format!("{cplace}.key"), p),
                        server_names: c
                            .server_names
                            .unwrap_or_default()
                            .into_iter()
                            .enumerate()
                            .filter_map(|(k, n)| {
                                host_pattern(&n, &format!("{cplace}.server_names[{k}]"), p)
                            })
                            .collect(),
                    }
                })
                .collect();
            ListenerTls {
                certificates,
                http2: t.http2.unwrap_or(true),
            }
        });
        out.push(Listener { address, tls });
    }
    out
}
