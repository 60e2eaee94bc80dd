//! `tollgate health`: one HTTP/1.1 `GET` of a health endpoint, for container `HEALTHCHECK`s
//! and probes in images that carry no `curl`. Blocking, with one deadline for the whole
//! exchange; only plain `http://` URLs (probes run next to the gateway, on loopback).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Why a probe did not see a healthy answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0:?} is not an http://host:port/path URL")]
    BadUrl(String),
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("{address}: {source}")]
    Exchange {
        address: String,
        source: std::io::Error,
    },
    #[error("{0}: the answer is not an HTTP response")]
    NotHttp(String),
    #[error("{url}: answered {status}")]
    Unhealthy { url: String, status: u16 },
}

/// GETs `url` within `timeout`; `Ok(status)` for a 2xx answer.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let uri: http::Uri = url.parse().map_err(|_| ProbeError::BadUrl(url.into()))?;
    let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(ProbeError::BadUrl(url.into()));
    };
    let address = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    );
    let deadline = Instant::now() + timeout;
    let connect_error = |source| ProbeError::Connect {
        address: address.clone(),
        source,
    };
    let peer = address
        .to_socket_addrs()
        .map_err(connect_error)?
        .next()
        .ok_or_else(|| connect_error(std::io::ErrorKind::NotFound.into()))?;
    let mut conn = TcpStream::connect_timeout(&peer, timeout).map_err(connect_error)?;
    let exchange = |source| ProbeError::Exchange {
        address: address.clone(),
        source,
    };
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    conn.set_write_timeout(Some(left())).map_err(exchange)?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: tollgate-health\r\n\
         Connection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).map_err(exchange)?;
    // The status line is all a probe needs.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        conn.set_read_timeout(Some(left())).map_err(exchange)?;
        match conn.read(&mut buf).map_err(exchange)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let status = std::str::from_utf8(&head)
        .ok()
        .and_then(|text| text.lines().next())
        .and_then(|line| line.strip_prefix("HTTP/1."))
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| ProbeError::NotHttp(address.clone()))?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(ProbeError::Unhealthy {
            url: url.into(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_are_probed() {
        for bad in [
            "https://127.0.0.1/health",
            "127.0.0.1:8080",
            "http://",
            "::",
        ] {
            assert!(
                matches!(
                    probe(bad, Duration::from_millis(50)),
                    Err(ProbeError::BadUrl(_))
                ),
                "{bad}"
            );
        }
    }
}
