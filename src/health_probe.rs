//! `tollgate health`: one `GET` of a health endpoint, for container `HEALTHCHECK`s and probes
//! in images that carry no `curl`. Only plain `http://` URLs: probes run next to the gateway,
//! on loopback. The exchange is reqwest's, on a one-thread runtime, under one deadline.

use std::time::Duration;

/// Why a probe did not see a healthy answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0:?} is not an http://host:port/path URL")]
    BadUrl(String),
    #[error("cannot start the probe: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: reqwest::Error },
    #[error("{url}: {source}")]
    Exchange { url: String, source: reqwest::Error },
    #[error("{url}: answered {status}")]
    Unhealthy { url: String, status: u16 },
}

/// GETs `url` within `timeout`; `Ok(status)` for a 2xx answer.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| ProbeError::BadUrl(url.into()))?;
    if parsed.scheme() != "http" || parsed.host().is_none() {
        return Err(ProbeError::BadUrl(url.into()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent("tollgate-health")
            .build()?;
        client.get(parsed).send().await
    });
    let status = match answer {
        Ok(response) => response.status().as_u16(),
        Err(source) if source.is_connect() => {
            return Err(ProbeError::Connect {
                url: url.into(),
                source,
            })
        }
        Err(source) => {
            return Err(ProbeError::Exchange {
                url: url.into(),
                source,
            })
        }
    };
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
