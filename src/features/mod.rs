//! Edge features, one module each: every module owns its YAML section (serde surface), its
//! validation (each problem with its place) and its [`Step`].
//!
//! A feature is set per route and as a server-wide default (`defaults:`); a route's own
//! section replaces the default one (as a route-level plugin does in Kong), and `false`
//! switches the default off for that route. [`pipeline`] compiles a route's steps, in the
//! order of the phase chart, once per config snapshot.
//!
//! Adding a feature: its module here; its field in [`RawFeatures`], [`FeatureSet`], the
//! route's raw section (`RawRoute` in `src/config/raw.rs`) and [`pipeline`]; README and tests.

pub mod compression;
pub mod cors;
pub mod headers;
pub mod ip_rules;
pub mod path_template;
pub mod redirect;
pub mod rewrite;
pub mod security_headers;
pub mod size_limits;
pub mod switch;

use crate::pipeline::{Pipeline, Step};
use crate::problems::Problems;
use serde::Deserialize;
use std::sync::Arc;
use switch::Switch;

/// The feature sections of `defaults:` (a route carries the same keys).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeatures {
    pub size_limits: Option<Switch<size_limits::RawSizeLimits>>,
    pub ip_rules: Option<Switch<ip_rules::RawIpRules>>,
    pub rewrite: Option<Switch<rewrite::RawRewrite>>,
    pub cors: Option<Switch<cors::RawCors>>,
    pub headers: Option<Switch<headers::RawHeaders>>,
    pub security_headers: Option<Switch<security_headers::RawSecurityHeaders>>,
    pub compression: Option<Switch<compression::RawCompression>>,
}

/// A feature's validated setting on a route, or in `defaults:`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Setting<T> {
    /// Not set here: a route takes the server-wide default.
    #[default]
    Inherit,
    /// Switched off (`false`).
    Off,
    /// Configured here.
    On(Arc<T>),
}

impl<T> Setting<T> {
    /// The step that runs on a route whose own setting is `self`, given the default.
    fn step(&self, default: &Setting<T>) -> Option<Arc<dyn Step>>
    where
        T: Step + 'static,
    {
        let feature = match (self, default) {
            (Setting::On(feature), _) | (Setting::Inherit, Setting::On(feature)) => feature,
            _ => return None,
        };
        Some(Arc::clone(feature) as Arc<dyn Step>)
    }

    /// The validated setting of a section as written at `place`.
    fn validate<R>(
        raw: Option<Switch<R>>,
        place: String,
        p: &mut Problems,
        validate: impl FnOnce(R, &str, &mut Problems) -> Option<T>,
    ) -> Self {
        match raw {
            None => Setting::Inherit,
            Some(Switch::Off) => Setting::Off,
            Some(Switch::On(raw)) => {
                validate(raw, &place, p).map_or(Setting::Off, |f| Setting::On(Arc::new(f)))
            }
        }
    }
}

/// Every feature's validated setting on one route (or in `defaults:`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FeatureSet {
    pub size_limits: Setting<size_limits::SizeLimits>,
    pub ip_rules: Setting<ip_rules::IpRules>,
    pub rewrite: Setting<rewrite::Rewrite>,
    /// A route's redirect: per route only, never in `defaults:` (it stands for the route's
    /// upstream), so it is not in [`RawFeatures`]; the route's validation sets it.
    pub redirect: Option<Arc<redirect::Redirect>>,
    pub cors: Setting<cors::Cors>,
    pub headers: Setting<headers::Headers>,
    pub security_headers: Setting<security_headers::SecurityHeaders>,
    pub compression: Setting<compression::Compression>,
}

impl FeatureSet {
    /// Validates the sections of `raw`; `place` is where they sit (`routes[3]`, `defaults`).
    pub fn validate(raw: RawFeatures, place: &str, p: &mut Problems) -> FeatureSet {
        FeatureSet {
            size_limits: Setting::validate(
                raw.size_limits,
                format!("{place}.size_limits"),
                p,
                size_limits::validate,
            ),
            ip_rules: Setting::validate(
                raw.ip_rules,
                format!("{place}.ip_rules"),
                p,
                ip_rules::validate,
            ),
            rewrite: Setting::validate(
                raw.rewrite,
                format!("{place}.rewrite"),
                p,
                rewrite::validate,
            ),
            redirect: None,
            cors: Setting::validate(raw.cors, format!("{place}.cors"), p, cors::validate),
            headers: Setting::validate(
                raw.headers,
                format!("{place}.headers"),
                p,
                headers::validate,
            ),
            security_headers: Setting::validate(
                raw.security_headers,
                format!("{place}.security_headers"),
                p,
                security_headers::validate,
            ),
            compression: Setting::validate(
                raw.compression,
                format!("{place}.compression"),
                p,
                compression::validate,
            ),
        }
    }
}

/// The steps of a route whose features are `route`, with the server-wide `defaults`, in
/// the order they run (the README's phase chart).
pub fn pipeline(route: &FeatureSet, defaults: &FeatureSet) -> Pipeline {
    let steps = [
        route.ip_rules.step(&defaults.ip_rules),
        route.size_limits.step(&defaults.size_limits),
        route.redirect.clone().map(|r| r as Arc<dyn Step>),
        route.cors.step(&defaults.cors),
        route.rewrite.step(&defaults.rewrite),
        route.headers.step(&defaults.headers),
        route.security_headers.step(&defaults.security_headers),
        route.compression.step(&defaults.compression),
    ];
    Pipeline::new(steps.into_iter().flatten().collect())
}

/// A duration written like `10m` or `365d`, in whole seconds (for headers that carry
/// seconds: `Access-Control-Max-Age`, HSTS `max-age`).
fn whole_seconds(raw: &str, place: &str, p: &mut Problems) -> Option<u64> {
    match humantime::parse_duration(raw.trim()) {
        Ok(d) if d.subsec_nanos() == 0 => Some(d.as_secs()),
        Ok(_) => {
            p.push(place, format!("{raw:?} is not a whole number of seconds"));
            None
        }
        Err(e) => {
            p.push(
                place,
                format!("{raw:?} is not a duration like 10m, 1h or 365d ({e})"),
            );
            None
        }
    }
}
