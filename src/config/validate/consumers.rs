//! `consumers:`: consumers and their keys, from the file.

use super::*;

pub(super) fn consumers(
    raw: Vec<RawConsumer>,
    plans: &HashSet<&str>,
    p: &mut Problems,
) -> Vec<ConsumerSpec> {
    let mut ids = HashSet::new();
    let mut key_ids = HashSet::new();
    let mut hashes = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, c)| {
            let place = format!("consumers[{i}]");
            check_identifier(&c.id, &format!("{place}.id"), p);
            if !ids.insert(c.id.clone()) {
                p.push(format!("{place}.id"), format!("duplicate consumer id {:?}", c.id));
            }
            if let Some(plan) = c.plan.as_deref().filter(|plan| !plans.contains(plan)) {
                p.push(format!("{place}.plan"), format!("no plan named {plan:?}"));
            }
            for (j, scope) in c.scopes.iter().enumerate() {
                check_scope(scope, &format!("{place}.scopes[{j}]"), p);
            }
            let keys = c
                .keys
                .into_iter()
                .enumerate()
                .map(|(j, k)| {
                    let kplace = format!("{place}.keys[{j}]");
                    check_identifier(&k.id, &format!("{kplace}.id"), p);
                    if !key_ids.insert(k.id.clone()) {
                        p.push(format!("{kplace}.id"), format!("duplicate key id {:?}", k.id));
                    }
                    let hash = crate::vocab::KeyHash::from_hex(&k.hash).unwrap_or_else(|| {
                        p.push(
                            format!("{kplace}.hash"),
                            "must be the 64 hex digits printed by `tollgate key new` (the key itself never goes in the file)",
                        );
                        crate::vocab::KeyHash([0; 32])
                    });
                    if !hashes.insert(hash) {
                        p.push(format!("{kplace}.hash"), "the same key is listed twice");
                    }
                    if let Some(scopes) = &k.scopes {
                        for (s, scope) in scopes.iter().enumerate() {
                            if !c.scopes.contains(scope) {
                                p.push(
                                    format!("{kplace}.scopes[{s}]"),
                                    format!("{scope:?} is not one of the consumer's scopes"),
                                );
                            }
                        }
                    }
                    let expires_at = k.expires_at.as_deref().and_then(|t| {
                        humantime::parse_rfc3339_weak(t)
                            .map_err(|e| {
                                p.push(format!("{kplace}.expires_at"), format!("{t:?} is not a time like 2027-01-31T00:00:00Z ({e})"))
                            })
                            .ok()
                    });
                    KeySpec {
                        id: k.id,
                        hash,
                        prefix: k.prefix,
                        scopes: k.scopes,
                        status: status(k.status.as_deref(), &format!("{kplace}.status"), p),
                        expires_at,
                    }
                })
                .collect();
            ConsumerSpec {
                id: c.id,
                plan: c.plan,
                status: status(c.status.as_deref(), &format!("{place}.status"), p),
                scopes: c.scopes,
                keys,
            }
        })
        .collect()
}

pub(super) fn status(raw: Option<&str>, place: &str, p: &mut Problems) -> Status {
    match raw.unwrap_or("active") {
        "active" => Status::Active,
        "disabled" => Status::Disabled,
        other => {
            p.push(
                place,
                format!("unknown status {other:?} (active, disabled)"),
            );
            Status::Disabled
        }
    }
}
