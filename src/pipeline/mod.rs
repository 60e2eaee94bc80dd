//! The seam every edge feature plugs into: a [`Step`] has hooks at the points of a request
//! (the request once routed, each request-body chunk, the upstream request, the upstream
//! response, the response to the client), each doing nothing unless the step overrides it.
//!
//! A route's [`Pipeline`] is compiled once per config snapshot from its YAML (and the
//! server-wide `defaults:`), never per request. It keeps, for each hook, only the steps that
//! use it ([`Step::hooks`]), so a hook no step uses costs an empty loop, and a request runs
//! only the steps of its route. The proxy (`src/proxy/`) calls the hooks in the phase
//! order documented there and in the README's phase chart.
//!
//! This module sits low in the layers: it knows Pingora's request and response types and
//! nothing of tollgate's own, so every feature module can build on it.

use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::net::IpAddr;
use std::sync::Arc;

/// What a step may read about the request it runs for, besides the request itself.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The request id the client and the upstream see.
    pub request_id: &'a HeaderValue,
    /// The client's address as the trusted-proxy logic resolved it.
    pub client_ip: Option<IpAddr>,
    /// The consumer, once identified (not yet in the request hook).
    pub consumer: Option<&'a str>,
    /// The route's name; empty for answers made before a route matched.
    pub route: &'a str,
    /// The client connection is TLS.
    pub tls: bool,
}

/// A refusal in the gateway's JSON error shape (`{"error": code, "message": ...}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: u16,
    /// The machine-readable `error` field.
    pub code: &'static str,
    /// What the client should know; never a secret.
    pub message: String,
}

/// A step's answer instead of proxying the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A refusal.
    Refuse(Refusal),
    /// A redirect to `location` (301, 302, 307 or 308).
    Redirect { status: u16, location: String },
    /// An answer without a body (a CORS preflight's 204): the steps' response hooks add
    /// its headers.
    Empty { status: u16 },
}

impl Answer {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Answer::Refuse(Refusal { status, .. })
            | Answer::Redirect { status, .. }
            | Answer::Empty { status } => *status,
        }
    }
}

/// Which hooks a step uses; the pipeline calls a step only at these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hooks {
    pub request: bool,
    pub request_body: bool,
    pub upstream_request: bool,
    pub upstream_response: bool,
    pub response: bool,
}

/// One edge feature, compiled for one route (or for the server-wide defaults).
pub trait Step: Send + Sync + std::fmt::Debug {
    /// The step's name in the phase chart and in logs (`cors`, `ip_rules`, ...).
    fn name(&self) -> &'static str;

    /// The hooks this step overrides.
    fn hooks(&self) -> Hooks;

    /// The request has matched this route; runs before identification and rate limiting.
    /// `Err` answers the request with `Answer` and ends it.
    fn request(&self, _session: &mut Session, _facts: &Facts) -> Result<(), Answer> {
        Ok(())
    }

    /// A chunk of the request body is on its way upstream; `received` counts every body
    /// byte so far, this chunk included; `end`: it was the last. `Err` cuts the request off.
    fn request_body(&self, _received: u64, _end: bool) -> Result<(), Refusal> {
        Ok(())
    }

    /// The request the upstream will receive (`client` is what the client sent).
    fn upstream_request(
        &self,
        _client: &RequestHeader,
        _upstream: &mut RequestHeader,
        _facts: &Facts,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// The upstream's response head, before anything else sees it.
    fn upstream_response(&self, _response: &mut ResponseHeader, _facts: &Facts) {}

    /// The response head the client will receive: the upstream's, or one the gateway made
    /// itself (`made_by_gateway`: an error, a redirect, a preflight, the health endpoint).
    fn response(
        &self,
        _session: &mut Session,
        _response: &mut ResponseHeader,
        _facts: &Facts,
        _made_by_gateway: bool,
    ) -> pingora::Result<()> {
        Ok(())
    }
}

/// A route's steps, in order, listed once per hook that they use.
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    names: Box<[&'static str]>,
    request: Box<[Arc<dyn Step>]>,
    request_body: Box<[Arc<dyn Step>]>,
    upstream_request: Box<[Arc<dyn Step>]>,
    upstream_response: Box<[Arc<dyn Step>]>,
    response: Box<[Arc<dyn Step>]>,
}

impl Pipeline {
    /// A pipeline running `steps` in this order at each hook.
    pub fn new(steps: Vec<Arc<dyn Step>>) -> Self {
        let with = |hook: fn(&Hooks) -> bool| -> Box<[Arc<dyn Step>]> {
            steps.iter().filter(|s| hook(&s.hooks())).cloned().collect()
        };
        Pipeline {
            names: steps.iter().map(|s| s.name()).collect(),
            request: with(|h| h.request),
            request_body: with(|h| h.request_body),
            upstream_request: with(|h| h.upstream_request),
            upstream_response: with(|h| h.upstream_response),
            response: with(|h| h.response),
        }
    }

    /// The steps' names, in order.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// Runs the request hooks; the first answer ends the request.
    pub fn request(&self, session: &mut Session, facts: &Facts) -> Result<(), Answer> {
        self.request
            .iter()
            .try_for_each(|step| step.request(session, facts))
    }

    /// Whether some step looks at the request body (else the body hook need not run).
    pub fn inspects_request_body(&self) -> bool {
        !self.request_body.is_empty()
    }

    /// Runs the request-body hooks.
    pub fn request_body(&self, received: u64, end: bool) -> Result<(), Refusal> {
        self.request_body
            .iter()
            .try_for_each(|step| step.request_body(received, end))
    }

    /// Runs the upstream-request hooks.
    pub fn upstream_request(
        &self,
        client: &RequestHeader,
        upstream: &mut RequestHeader,
        facts: &Facts,
    ) -> pingora::Result<()> {
        self.upstream_request
            .iter()
            .try_for_each(|step| step.upstream_request(client, upstream, facts))
    }

    /// Runs the upstream-response hooks.
    pub fn upstream_response(&self, response: &mut ResponseHeader, facts: &Facts) {
        for step in self.upstream_response.iter() {
            step.upstream_response(response, facts);
        }
    }

    /// Runs the response hooks.
    pub fn response(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        facts: &Facts,
        made_by_gateway: bool,
    ) -> pingora::Result<()> {
        self.response
            .iter()
            .try_for_each(|step| step.response(session, response, facts, made_by_gateway))
    }
}
