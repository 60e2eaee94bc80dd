//! The one writer of every answer the gateway makes itself: errors in the JSON shape of
//! [`ApiError`], JSON documents (health, rate-limit status), and the answers of pipeline
//! steps (redirects, preflights). Each gets `X-Request-Id` and `Cache-Control: no-store`,
//! and then the response hooks of the request's pipeline (the route's, or the server-wide
//! `defaults:` before a route matched), so CORS, header rules and security headers apply to
//! the gateway's own 401/404/429/5xx as they do to upstream responses.
//!
//! Answers made on a connection before a request was parsed (431, 408, connection caps)
//! are the exception: they are written as raw bytes by [`ApiError::http1_response`].

use super::RequestCtx;
use crate::api_error::ApiError;
use crate::pipeline::Answer;
use crate::request_id;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// What the gateway answers.
pub enum Reply<'a> {
    /// An error, with the headers it carries besides its own (rate-limit headers on a 429).
    Error(&'a ApiError, Vec<(HeaderName, HeaderValue)>),
    /// A whole JSON document.
    Json(u16, Bytes),
    /// A pipeline step's redirect or empty answer (refusals are [`ApiError::Refused`]).
    Step(&'a Answer),
}

/// Writes `reply` as the whole response to the client.
pub async fn respond(
    session: &mut Session,
    ctx: &RequestCtx,
    reply: Reply<'_>,
) -> pingora::Result<()> {
    let (status, body) = match &reply {
        Reply::Error(err, _) => (err.status(), Some(err.body(&ctx.request_id))),
        Reply::Json(status, body) => (*status, Some(body.clone())),
        Reply::Step(answer) => (answer.status(), None),
    };
    let mut resp = ResponseHeader::build(status, Some(6))?;
    match &body {
        Some(body) => {
            resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
            resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        }
        // A 204 (a CORS preflight's) must not carry Content-Length (RFC 9110 §8.6).
        None if status == 204 => {}
        None => resp.insert_header(http::header::CONTENT_LENGTH, 0)?,
    }
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(request_id::HEADER, ctx.request_id.clone())?;
    match reply {
        Reply::Error(err, headers) => {
            if let Some((name, value)) = err.extra_header() {
                resp.insert_header(name, value)?;
            }
            for (name, value) in headers {
                resp.insert_header(name, value)?;
            }
        }
        Reply::Step(Answer::Redirect { location, .. }) => {
            resp.insert_header(http::header::LOCATION, location.as_str())?;
        }
        Reply::Json(..) | Reply::Step(_) => {}
    }
    let pipeline = ctx
        .route
        .as_ref()
        .map_or(&ctx.runtime.pipeline, |r| &r.pipeline);
    pipeline.response(session, &mut resp, &ctx.facts(), true)?;
    let head_only = session.req_header().method == Method::HEAD || body.is_none();
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if let (false, Some(body)) = (head_only, body) {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
