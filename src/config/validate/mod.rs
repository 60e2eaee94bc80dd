//! Turns the raw YAML structs into the typed model, collecting every problem with its place
//! in the file (`routes[2].upstream: no upstream named "ordrs"`) so an operator sees all
//! mistakes at once.

use super::model::*;
use super::raw::*;
use crate::features::{headers, redirect, FeatureSet, RawFeatures};
use crate::limit::Algorithm;
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::problems::Problems;

mod account;
mod admin;
mod auth;
mod consumers;
mod database;
mod listeners;
mod rate_limit;
mod routes;
mod server;
mod upstreams;
mod values;

use account::*;
pub use admin::strong_token;
use admin::*;
use auth::*;
use consumers::*;
use database::*;
use listeners::*;
use rate_limit::*;
use routes::*;
use server::*;
use upstreams::*;
use values::*;
pub use values::{
    valid_identifier, valid_name, valid_scope, IDENTIFIER_RULE, NAME_RULE, SCOPE_RULE,
};

/// Validates `raw`; relative file paths inside it are resolved against `base_dir`.
pub fn validate(raw: RawConfig, base_dir: &Path) -> Result<Config, Vec<String>> {
    let mut p = Problems::default();
    let server = server_settings(raw.server, &mut p);
    let listeners = listeners(raw.listeners, base_dir, &mut p);
    let metrics_address = raw
        .metrics
        .and_then(|m| socket_addr(&m.address, "metrics.address", &mut p));
    let upstreams = upstreams(raw.upstreams, base_dir, &mut p);
    let plans = plans(raw.plans, &mut p);
    let plan_names: HashSet<&str> = plans.iter().map(|plan| plan.name.as_str()).collect();
    let consumers = consumers(raw.consumers, &plan_names, &mut p);
    let any_keys = consumers.iter().any(|c| !c.keys.is_empty());
    let mut auth = auth(raw.auth, base_dir, &plan_names, any_keys, &mut p);
    let rate_limit = rate_limit(raw.rate_limit, &plan_names, &mut p);
    let database = raw.database.map(|d| database(d, base_dir, &mut p));
    if database.is_some() && !consumers.is_empty() {
        p.push(
            "consumers",
            "with a database configured, consumers and keys live in PostgreSQL (manage them through the admin API)",
        );
    }
    let admin = raw.admin.map(|a| admin(a, base_dir, &mut p));
    let account = raw.account.map(|a| {
        if database.is_none() {
            p.push("account", "the account API needs `database:`");
        }
        match &admin {
            None => p.push(
                "account",
                "the account API is served by the admin service: add `admin:`",
            ),
            // The account API is reached through the proxy, i.e. from loopback: an admin
            // listener open to loopback callers would be open to the Internet.
            Some(a) if a.tokens.is_empty() => p.push(
                "account",
                "the account API shares the admin listener, which is open without admin \
                 tokens: set admin.tokens_env or admin.tokens_file",
            ),
            Some(_) => {}
        }
        let settings = account(a, &mut p);
        if auth.issuers.iter().any(|i| i.issuer == settings.issuer) {
            p.push(
                "account.issuer",
                format!(
                    "{:?} is also an auth.jwt issuer; account tokens need an issuer of their own",
                    settings.issuer
                ),
            );
        }
        auth.issuers.push(account_issuer(&settings));
        settings
    });
    let names: HashSet<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    let routes = routes(raw.routes, &names, &auth, &rate_limit, &mut p);
    let defaults = FeatureSet::validate(raw.defaults, "defaults", &mut p);
    let identity = auth.identity_headers.named();
    headers::refuse_identity_headers(&defaults.headers, &identity, "defaults", &mut p);
    if p.is_empty() {
        Ok(Config {
            server,
            listeners,
            metrics_address,
            upstreams,
            routes,
            defaults,
            auth,
            plans,
            consumers,
            rate_limit,
            database,
            admin,
            account,
        })
    } else {
        Err(p.into_vec())
    }
}
