//! Every answer the gateway makes itself has one JSON shape:
//! `{"error": "<code>", "message": "<what to fix>", "request_id": "<id>"}`.

use crate::auth::jwt::JwtError;
use crate::auth::{AuthError, AuthMethod};
use crate::pipeline::Refusal;
use bytes::Bytes;
use http::{HeaderValue, Method};
use pingora::{Error, ErrorSource, ErrorType};

/// A rejection or failure the gateway answers on behalf of the upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// No route matches host and path.
    NoRoute,
    /// A route matches host and path, but not the method.
    MethodNotAllowed(Vec<Method>),
    /// The path has no canonical form, or holds what its route does not allow: why.
    BadPath(&'static str),
    /// The request-target is neither origin-form (`/...`) nor an `http(s)` URL.
    BadRequestTarget,
    /// The Host (or authority) is not a well-formed `host[:port]`.
    BadHost,
    /// An HTTP/1.1 request without `Host`.
    MissingHost,
    /// The request could not be parsed or was otherwise malformed.
    BadRequest,
    /// Every target of the route's upstream is unhealthy.
    NoHealthyTarget,
    /// Connecting to, or talking to, the upstream failed.
    BadGateway,
    /// The upstream did not answer in time.
    GatewayTimeout,
    /// A bug or resource problem in the gateway.
    Internal,
    /// The caller was not identified or not allowed.
    Auth(AuthError),
    /// A rate limit refused the request: the policy, and seconds until it would fit.
    RateLimited { policy: String, retry_after: u64 },
    /// The limiter could not decide and the failure mode is `closed`.
    LimiterUnavailable,
    /// The request head is larger than `server.max_request_header_size`.
    HeaderTooLarge,
    /// The request head did not arrive within `server.request_header_timeout`.
    HeaderTimeout,
    /// The process or the client's address already has its most connections open.
    TooManyConnections,
    /// `CONNECT` (tunnelling) is not proxied.
    ConnectNotSupported,
    /// The process is draining at shutdown and takes no new request.
    ShuttingDown,
    /// A pipeline step refused the request (IP rules, size limits, CORS).
    Refused(Refusal),
}

impl ApiError {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::NoRoute => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::BadPath(_)
            | ApiError::BadRequestTarget
            | ApiError::BadHost
            | ApiError::MissingHost
            | ApiError::BadRequest => 400,
            ApiError::HeaderTooLarge => 431,
            ApiError::HeaderTimeout => 408,
            ApiError::TooManyConnections => 503,
            ApiError::ShuttingDown => 503,
            ApiError::ConnectNotSupported => 405,
            ApiError::NoHealthyTarget => 503,
            ApiError::BadGateway => 502,
            ApiError::GatewayTimeout => 504,
            ApiError::Internal => 500,
            ApiError::Auth(e) => match e {
                AuthError::MissingCredentials
                | AuthError::InvalidApiKey
                | AuthError::InvalidToken(_)
                | AuthError::MethodNotAllowed(_) => 401,
                AuthError::ConsumerDisabled
                | AuthError::KeyDisabled
                | AuthError::KeyExpired
                | AuthError::InsufficientScope(_) => 403,
                AuthError::StoreUnavailable => 503,
                AuthError::TooManyKeyFailures(_) => 429,
            },
            ApiError::RateLimited { .. } => 429,
            ApiError::LimiterUnavailable => 503,
            ApiError::Refused(r) => r.status,
        }
    }

    /// Machine-readable code for the `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NoRoute => "route_not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::BadPath(_) => "invalid_path",
            ApiError::BadRequestTarget => "invalid_request_target",
            ApiError::BadHost => "invalid_host",
            ApiError::MissingHost => "missing_host",
            ApiError::BadRequest => "bad_request",
            ApiError::NoHealthyTarget => "no_healthy_upstream",
            ApiError::BadGateway => "bad_gateway",
            ApiError::GatewayTimeout => "upstream_timeout",
            ApiError::Internal => "internal_error",
            ApiError::Auth(e) => match e {
                AuthError::MissingCredentials => "missing_credentials",
                AuthError::InvalidApiKey => "invalid_api_key",
                AuthError::InvalidToken(JwtError::Expired) => "expired_token",
                AuthError::InvalidToken(JwtError::NotYetValid) => "token_not_yet_valid",
                AuthError::InvalidToken(JwtError::Revoked) => "revoked_token",
                AuthError::InvalidToken(_) => "invalid_token",
                AuthError::MethodNotAllowed(_) => "auth_method_not_allowed",
                AuthError::ConsumerDisabled => "consumer_disabled",
                AuthError::KeyDisabled => "key_disabled",
                AuthError::KeyExpired => "key_expired",
                AuthError::InsufficientScope(_) => "insufficient_scope",
                AuthError::StoreUnavailable => "credential_store_unavailable",
                AuthError::TooManyKeyFailures(_) => "too_many_key_failures",
            },
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::LimiterUnavailable => "rate_limit_unavailable",
            ApiError::HeaderTooLarge => "request_header_too_large",
            ApiError::HeaderTimeout => "request_header_timeout",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::ConnectNotSupported => "method_not_allowed",
            ApiError::Refused(r) => r.code,
        }
    }

    /// Human-readable explanation; never contains secrets.
    pub fn message(&self) -> String {
        match self {
            ApiError::NoRoute => "no route matches this host and path".into(),
            ApiError::MethodNotAllowed(ms) => format!(
                "this route accepts {}",
                ms.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
            ),
            ApiError::BadPath(why) => format!("the path is refused: {why}"),
            ApiError::BadRequestTarget => {
                "the request-target must be a path ('/...') or an http(s) URL".into()
            }
            ApiError::BadHost => "the Host header is not a valid host[:port]".into(),
            ApiError::MissingHost => "the request needs a Host header".into(),
            ApiError::BadRequest => "the request is malformed".into(),
            ApiError::NoHealthyTarget => "no healthy upstream target is available".into(),
            ApiError::BadGateway => "the upstream could not be reached or failed".into(),
            ApiError::GatewayTimeout => "the upstream did not answer in time".into(),
            ApiError::Internal => "the gateway failed to handle the request".into(),
            ApiError::Auth(e) => match e {
                AuthError::MissingCredentials => {
                    "this route needs an API key or a bearer token".into()
                }
                AuthError::InvalidApiKey => "the API key is not valid".into(),
                AuthError::InvalidToken(jwt) => jwt.to_string(),
                AuthError::MethodNotAllowed(m) => format!(
                    "this route does not accept {} credentials",
                    match m {
                        AuthMethod::ApiKey => "API-key",
                        _ => "bearer-token",
                    }
                ),
                AuthError::ConsumerDisabled => "this consumer is disabled".into(),
                AuthError::KeyDisabled => "this API key is disabled".into(),
                AuthError::KeyExpired => "this API key has expired".into(),
                AuthError::InsufficientScope(missing) => {
                    format!("this route needs the scopes: {}", missing.join(" "))
                }
                AuthError::StoreUnavailable => {
                    "credentials cannot be checked right now; retry shortly".into()
                }
                AuthError::TooManyKeyFailures(retry_after) => {
                    format!("too many unknown API keys from this address; retry in {retry_after} s")
                }
            },
            ApiError::RateLimited {
                policy,
                retry_after,
            } => format!("rate limit {policy:?} exceeded; retry in {retry_after} s"),
            ApiError::LimiterUnavailable => {
                "rate limits cannot be checked right now; retry shortly".into()
            }
            ApiError::HeaderTooLarge => "the request line and headers are too large".into(),
            ApiError::HeaderTimeout => "the request head did not arrive in time".into(),
            ApiError::TooManyConnections => "too many connections are open; retry shortly".into(),
            ApiError::ShuttingDown => {
                "this instance is shutting down; retry (another instance)".into()
            }
            ApiError::ConnectNotSupported => "CONNECT is not supported".into(),
            ApiError::Refused(r) => r.message.clone(),
        }
    }

    /// Headers that belong with this answer (`Allow`, `WWW-Authenticate`).
    pub fn extra_header(&self) -> Option<(http::HeaderName, String)> {
        const REALM: &str = "Bearer realm=\"tollgate\"";
        match self {
            ApiError::MethodNotAllowed(ms) => Some((
                http::header::ALLOW,
                ms.iter().map(Method::as_str).collect::<Vec<_>>().join(", "),
            )),
            ApiError::Auth(AuthError::InvalidToken(e)) => Some((
                http::header::WWW_AUTHENTICATE,
                format!("{REALM}, error=\"invalid_token\", error_description=\"{e}\""),
            )),
            ApiError::Auth(AuthError::InsufficientScope(missing)) => Some((
                http::header::WWW_AUTHENTICATE,
                format!(
                    "{REALM}, error=\"insufficient_scope\", scope=\"{}\"",
                    missing.join(" ")
                ),
            )),
            ApiError::Auth(AuthError::TooManyKeyFailures(retry_after)) => {
                Some((http::header::RETRY_AFTER, retry_after.to_string()))
            }
            e if e.status() == 401 => Some((http::header::WWW_AUTHENTICATE, REALM.to_string())),
            _ => None,
        }
    }

    /// Classifies a Pingora error from proxying; `None` when the client is gone, so nothing
    /// can be answered.
    pub fn from_proxy_error(e: &Error) -> Option<ApiError> {
        use ErrorType::*;
        Some(match (e.esource(), e.etype()) {
            (_, HTTPStatus(503)) => ApiError::NoHealthyTarget,
            (_, ConnectTimedout | ReadTimedout | WriteTimedout) => ApiError::GatewayTimeout,
            (ErrorSource::Upstream, _) => ApiError::BadGateway,
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => return None,
            (ErrorSource::Downstream, _) => ApiError::BadRequest,
            (_, HTTPStatus(400)) => ApiError::BadRequest,
            _ => ApiError::Internal,
        })
    }

    /// The JSON body.
    pub fn body(&self, request_id: &HeaderValue) -> Bytes {
        let mut body = serde_json::json!({
            "error": self.code(),
            "message": self.message(),
            "request_id": request_id.to_str().unwrap_or(""),
        });
        if let ApiError::RateLimited {
            policy,
            retry_after,
        } = self
        {
            body["policy"] = policy.as_str().into();
            body["retry_after"] = (*retry_after).into();
        }
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        bytes.push(b'\n');
        Bytes::from(bytes)
    }

    /// The whole HTTP/1.1 response, bytes on the wire, for answers made on a connection
    /// before (or instead of) a parsed request: it always closes the connection.
    pub fn http1_response(&self, request_id: &HeaderValue) -> Vec<u8> {
        let body = self.body(request_id);
        let status = http::StatusCode::from_u16(self.status())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             x-request-id: {}\r\ncache-control: no-store\r\nconnection: close\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            body.len(),
            request_id.to_str().unwrap_or(""),
        );
        if matches!(self, ApiError::TooManyConnections) {
            head.push_str("retry-after: 1\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_map_to_gateway_statuses() {
        let timeout = Error::new(ErrorType::ConnectTimedout).into_up();
        assert_eq!(
            ApiError::from_proxy_error(&timeout),
            Some(ApiError::GatewayTimeout)
        );
        let refused = Error::new(ErrorType::ConnectRefused).into_up();
        assert_eq!(
            ApiError::from_proxy_error(&refused),
            Some(ApiError::BadGateway)
        );
        let gone = Error::new(ErrorType::ConnectionClosed).into_down();
        assert_eq!(ApiError::from_proxy_error(&gone), None);
    }

    #[test]
    fn connection_level_answers_are_whole_http1_responses() {
        let raw = ApiError::HeaderTooLarge.http1_response(&HeaderValue::from_static("rid"));
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\nconnection: close"));
        assert!(head.contains("\r\nx-request-id: rid"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "request_header_too_large");
    }

    #[test]
    fn body_has_the_shared_shape() {
        let body = ApiError::NoRoute.body(&HeaderValue::from_static("rid"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "route_not_found");
        assert_eq!(v["request_id"], "rid");
        assert!(v["message"].as_str().unwrap().contains("no route"));
    }
}
