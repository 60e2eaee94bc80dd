//! The PostgreSQL data layer against a real PostgreSQL: each test starts its own cluster
//! (`Postgres::start`), so tests run in parallel and never see each other's rows.

mod support;
use support::*;

use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tollgate::auth::api_key::{KeyHash, KeyHasher};
use tollgate::auth::store::{CredentialStore, Status};
use tollgate::config::DatabaseTls;
use tollgate::db::audit::{self, AuditFilter};
use tollgate::db::consumers::{self, ConsumerFilter, ConsumerUpdate, NewConsumer};
use tollgate::db::credentials::PgCredentialStore;
use tollgate::db::keys::{self, KeyUpdate, NewApiKey, Rotation};
use tollgate::db::listen::{spawn_listener_with, ListenerOptions};
use tollgate::db::migrate::{migrate_with, Migration, MIGRATIONS};
use tollgate::db::plans::{self, Algorithm, Limit, NewPlan, PlanUpdate};
use tollgate::db::tokens::{self, NewRefreshToken, TokenHash};
use tollgate::db::usage::{self, UsageDelta, UsageQuery};
use tollgate::db::users::{self, NewUser};
use tollgate::db::{migrate, Change, Day, Db, DbError};

const ADMIN: &str = "admin@test";

/// A fresh cluster with the schema applied, and a pool on it.
async fn fresh() -> (Postgres, Db) {
    let pg = Postgres::start().await;
    let db = Db::connect(&pg.url(), 4).await.expect("connect");
    migrate(&db).await.expect("migrate");
    (pg, db)
}

/// The stored form of the API key `key-<n>`.
fn hash(n: u32) -> KeyHash {
    KeyHasher::new(b"test pepper").hash(&format!("key-{n}"))
}

fn gold() -> NewPlan {
    NewPlan {
        name: "gold".into(),
        algorithm: Algorithm::SlidingWindow,
        limits: vec![
            Limit {
                requests: 10,
                per_seconds: 1,
                burst: None,
            },
            Limit {
                requests: 1000,
                per_seconds: 3600,
                burst: Some(20),
            },
        ],
        concurrency: Some(5),
        block_for_seconds: None,
    }
}

fn new_key(consumer: &str, n: u32) -> NewApiKey {
    NewApiKey {
        id: None,
        consumer_id: consumer.into(),
        name: format!("key {n}"),
        prefix: format!("tg_prefix{n:02}"),
        hash: hash(n),
        scopes: None,
        expires_at: None,
    }
}

fn consumer_on(id: &str, plan: Option<&str>) -> NewConsumer {
    NewConsumer {
        plan: plan.map(str::to_string),
        ..NewConsumer::new(id)
    }
}

/// Audit entries for one target, newest first.
async fn audit_of(db: &Db, target_type: &str, target_id: &str) -> Vec<String> {
    audit::list(
        db,
        &AuditFilter {
            target_type: Some(target_type.into()),
            target_id: Some(target_id.into()),
            ..AuditFilter::default()
        },
    )
    .await
    .expect("audit list")
    .into_iter()
    .map(|e| e.action)
    .collect()
}

/// Waits until `done` holds, for at most `limit`.
async fn wait_until(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {{
        let result = $result;
        assert!(
            matches!(result, Err($pattern)),
            "expected {}, got {result:?}",
            stringify!($pattern)
        );
    }};
}

#[tokio::test]
async fn migrations_apply_from_empty_and_rerun_is_a_no_op() {
    let pg = Postgres::start().await;
    let db = Db::connect(&pg.url(), 2).await.expect("connect");
    let first = migrate(&db).await.expect("first migrate");
    assert_eq!(first.applied, vec![1, 2, 3]);
    assert_eq!(first.current, 3);
    let tables = pg
        .psql(
            "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables \
             WHERE table_schema = 'public'",
        )
        .await;
    assert_eq!(
        tables,
        "api_keys,audit_log,consumers,plans,refresh_tokens,schema_migrations,usage,usage_batches,users"
    );
    let again = migrate(&db).await.expect("second migrate");
    assert!(again.applied.is_empty(), "{again:?}");
    assert_eq!(
        pg.psql("SELECT string_agg(version || ':' || name, ',' ORDER BY version) FROM schema_migrations")
            .await,
        "1:init,2:batches_and_expiry,3:plan_block_for"
    );
    // The proxy's lookups have their indexes.
    let indexes = pg
        .psql("SELECT string_agg(indexdef, E'\\n') FROM pg_indexes WHERE schemaname = 'public'")
        .await;
    for wanted in [
        "UNIQUE INDEX api_keys_hash_key ON public.api_keys USING btree (hash)",
        "INDEX api_keys_consumer_idx ON public.api_keys USING btree (consumer_id)",
        "UNIQUE INDEX usage_pkey ON public.usage USING btree (day, consumer_id, key_id, route)",
        "UNIQUE INDEX users_email_key ON public.users USING btree (email)",
        "UNIQUE INDEX refresh_tokens_token_hash_key",
    ] {
        assert!(indexes.contains(wanted), "missing {wanted} in\n{indexes}");
    }
}

#[tokio::test]
async fn concurrent_migrations_on_a_fresh_database_apply_once() {
    let pg = Postgres::start().await;
    let a = Db::connect(&pg.url(), 1).await.expect("connect a");
    let b = Db::connect(&pg.url(), 1).await.expect("connect b");
    let (ra, rb) = tokio::join!(migrate(&a), migrate(&b));
    let (ra, rb) = (ra.expect("migrate a"), rb.expect("migrate b"));
    let mut applied = [ra.applied, rb.applied];
    applied.sort();
    assert_eq!(
        applied,
        [vec![], vec![1, 2, 3]],
        "exactly one instance applied the migrations"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM schema_migrations").await, "3");
}

#[tokio::test]
async fn newer_schema_is_refused_and_a_failed_migration_leaves_nothing() {
    let (pg, db) = fresh().await;

    // A migration that fails half-way is rolled back entirely.
    let mut broken = MIGRATIONS.to_vec();
    broken.push(Migration {
        version: 4,
        name: "broken",
        sql: "CREATE TABLE half_done (x int); SELECT * FROM no_such_table;",
    });
    let e = migrate_with(&db, &broken).await.unwrap_err();
    assert!(
        matches!(&e, DbError::Schema(m) if m.contains("migration 4 (broken)")),
        "{e}"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'half_done'")
            .await,
        "0"
    );
    assert_eq!(
        pg.psql("SELECT max(version) FROM schema_migrations").await,
        "3"
    );

    // A database migrated by a newer release is refused, untouched.
    pg.psql("INSERT INTO schema_migrations (version, name) VALUES (7, 'from_the_future')")
        .await;
    let e = migrate(&db).await.unwrap_err();
    assert!(
        matches!(&e, DbError::Schema(m) if m.contains("migration 7 (from_the_future)") && m.contains("newer")),
        "{e}"
    );
    // And a recorded version whose name differs is refused too.
    pg.psql("DELETE FROM schema_migrations WHERE version = 7; UPDATE schema_migrations SET name = 'other'")
        .await;
    assert_err!(migrate(&db).await, DbError::Schema(_));
}

#[tokio::test]
async fn plans_crud_and_delete_refused_while_in_use() {
    let (_pg, db) = fresh().await;

    let created = plans::create(&db, ADMIN, &gold()).await.expect("create");
    assert_eq!(created.name, "gold");
    assert_eq!(created.limits, gold().limits);
    assert_eq!(created.concurrency, Some(5));
    assert_err!(
        plans::create(&db, ADMIN, &gold()).await,
        DbError::Conflict(_)
    );
    let mut bad = gold();
    bad.name = "bad".into();
    bad.limits[0].requests = 0;
    assert_err!(plans::create(&db, ADMIN, &bad).await, DbError::Invalid(_));
    assert_err!(plans::create(&db, "", &gold()).await, DbError::Invalid(_));

    let mut silver = gold();
    silver.name = "silver".into();
    silver.algorithm = Algorithm::TokenBucket;
    plans::create(&db, ADMIN, &silver)
        .await
        .expect("create silver");
    let names: Vec<String> = plans::list(&db)
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["gold", "silver"]);
    assert_eq!(
        plans::get(&db, "silver").await.expect("get").algorithm,
        Algorithm::TokenBucket
    );
    assert_err!(plans::get(&db, "bronze").await, DbError::NotFound(_));

    let updated = plans::update(
        &db,
        ADMIN,
        "gold",
        &PlanUpdate {
            algorithm: Some(Algorithm::FixedWindow),
            limits: Some(vec![Limit {
                requests: 1,
                per_seconds: 60,
                burst: None,
            }]),
            concurrency: Some(None),
            block_for_seconds: None,
        },
    )
    .await
    .expect("update");
    assert_eq!(updated.algorithm, Algorithm::FixedWindow);
    assert_eq!(updated.limits.len(), 1);
    assert_eq!(updated.concurrency, None);
    assert!(updated.updated_at >= created.updated_at);
    // An empty update changes nothing but is still an update of an existing plan.
    let same = plans::update(&db, ADMIN, "gold", &PlanUpdate::default())
        .await
        .expect("empty update");
    assert_eq!(same.limits, updated.limits);
    assert_err!(
        plans::update(&db, ADMIN, "bronze", &PlanUpdate::default()).await,
        DbError::NotFound(_)
    );

    consumers::create(&db, ADMIN, &consumer_on("alice", Some("gold")))
        .await
        .expect("consumer on gold");
    let before = audit_of(&db, "plan", "gold").await;
    let e = plans::delete(&db, ADMIN, "gold").await.unwrap_err();
    assert!(
        matches!(&e, DbError::Conflict(m) if m.contains("in use")),
        "{e}"
    );
    assert_eq!(
        plans::get(&db, "gold").await.expect("still there").name,
        "gold"
    );
    assert_eq!(
        audit_of(&db, "plan", "gold").await,
        before,
        "a refused change is not audited"
    );

    consumers::update(
        &db,
        ADMIN,
        "alice",
        &ConsumerUpdate {
            plan: Some(None),
            ..ConsumerUpdate::default()
        },
    )
    .await
    .expect("move alice off gold");
    plans::delete(&db, ADMIN, "gold")
        .await
        .expect("delete unused plan");
    assert_err!(plans::get(&db, "gold").await, DbError::NotFound(_));
    assert_err!(
        plans::delete(&db, ADMIN, "gold").await,
        DbError::NotFound(_)
    );
    assert_eq!(
        audit_of(&db, "plan", "gold").await,
        ["plan.delete", "plan.update", "plan.update", "plan.create"]
    );
    let entry = &audit::list(&db, &AuditFilter::default())
        .await
        .expect("audit")[0];
    assert_eq!(entry.actor, ADMIN);
}

#[tokio::test]
async fn consumers_crud_with_stable_pagination_and_filters() {
    let (pg, db) = fresh().await;
    plans::create(&db, ADMIN, &gold()).await.expect("plan");

    let e = consumers::create(&db, ADMIN, &consumer_on("x", Some("platinum")))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DbError::Invalid(m) if m.contains("platinum")),
        "{e}"
    );
    for id in ["erin", "bob", "alice", "dave", "carol"] {
        let plan = ["alice", "carol", "erin"].contains(&id).then_some("gold");
        consumers::create(&db, ADMIN, &consumer_on(id, plan))
            .await
            .expect("create");
    }
    assert_err!(
        consumers::create(&db, ADMIN, &consumer_on("bob", None)).await,
        DbError::Conflict(_)
    );
    let mut not_object = NewConsumer::new("frank");
    not_object.metadata = json!([1]);
    assert_err!(
        consumers::create(&db, ADMIN, &not_object).await,
        DbError::Invalid(_)
    );
    assert_err!(
        consumers::create(&db, ADMIN, &NewConsumer::new("")).await,
        DbError::Invalid(_)
    );

    // Pages of two, in id order, until the end.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = consumers::list(
            &db,
            &ConsumerFilter {
                after: after.clone(),
                limit: 2,
                ..ConsumerFilter::default()
            },
        )
        .await
        .expect("page");
        seen.extend(page.items.into_iter().map(|c| c.id));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["alice", "bob", "carol", "dave", "erin"]);

    consumers::update(
        &db,
        ADMIN,
        "carol",
        &ConsumerUpdate {
            status: Some(Status::Disabled),
            scopes: Some(vec!["read".into(), "write".into()]),
            metadata: Some(json!({"tier": "vip"})),
            ..ConsumerUpdate::default()
        },
    )
    .await
    .expect("update carol");
    let on_gold = consumers::list(
        &db,
        &ConsumerFilter {
            plan: Some("gold".into()),
            ..ConsumerFilter::default()
        },
    )
    .await
    .expect("by plan");
    let ids: Vec<&str> = on_gold.items.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["alice", "carol", "erin"]);
    assert_eq!(on_gold.next_after, None);
    let active_on_gold = consumers::list(
        &db,
        &ConsumerFilter {
            plan: Some("gold".into()),
            status: Some(Status::Active),
            ..ConsumerFilter::default()
        },
    )
    .await
    .expect("by plan and status");
    let ids: Vec<&str> = active_on_gold.items.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["alice", "erin"]);

    let carol = consumers::get(&db, "carol").await.expect("get");
    assert_eq!(carol.status, Status::Disabled);
    assert_eq!(carol.scopes, ["read", "write"]);
    assert_eq!(carol.metadata, json!({"tier": "vip"}));
    assert_eq!(carol.plan.as_deref(), Some("gold"), "untouched fields stay");
    assert_err!(consumers::get(&db, "zoe").await, DbError::NotFound(_));
    assert_eq!(consumers::find(&db, "zoe").await.expect("find"), None);
    assert_err!(
        consumers::update(&db, ADMIN, "zoe", &ConsumerUpdate::default()).await,
        DbError::NotFound(_)
    );
    assert_err!(
        consumers::update(
            &db,
            ADMIN,
            "carol",
            &ConsumerUpdate {
                plan: Some(Some("platinum".into())),
                ..ConsumerUpdate::default()
            }
        )
        .await,
        DbError::Invalid(_)
    );

    // Deleting a consumer deletes its keys; a linked user account blocks it.
    let key = keys::create(&db, ADMIN, &new_key("dave", 1))
        .await
        .expect("key");
    consumers::delete(&db, ADMIN, "dave")
        .await
        .expect("delete dave");
    assert_err!(keys::get(&db, &key.id).await, DbError::NotFound(_));
    assert_err!(
        consumers::delete(&db, ADMIN, "dave").await,
        DbError::NotFound(_)
    );
    users::create(
        &db,
        ADMIN,
        &NewUser {
            email: "bob@example.com".into(),
            password_hash: "$argon2id$x".into(),
            consumer_id: Some("bob".into()),
        },
    )
    .await
    .expect("user");
    let e = consumers::delete(&db, ADMIN, "bob").await.unwrap_err();
    assert!(
        matches!(&e, DbError::Conflict(m) if m.contains("in use")),
        "{e}"
    );
    assert_eq!(
        audit_of(&db, "consumer", "dave").await,
        ["consumer.delete", "consumer.create"]
    );
    assert_eq!(pg.psql("SELECT count(*) FROM consumers").await, "4");
}

#[tokio::test]
async fn keys_crud_revoke_and_batched_last_use() {
    let (_pg, db) = fresh().await;
    consumers::create(&db, ADMIN, &NewConsumer::new("alice"))
        .await
        .expect("consumer");
    consumers::create(&db, ADMIN, &NewConsumer::new("bob"))
        .await
        .expect("consumer");

    let k1 = keys::create(&db, ADMIN, &new_key("alice", 1))
        .await
        .expect("k1");
    assert!(k1.id.starts_with("key_") && k1.id.len() == 36, "{}", k1.id);
    assert_eq!(k1.hash, hash(1));
    assert_eq!(k1.status, Status::Active);
    let mut named = new_key("alice", 2);
    named.id = Some("imported-key".into());
    named.scopes = Some(vec!["read".into()]);
    let k2 = keys::create(&db, ADMIN, &named).await.expect("k2");
    assert_eq!(k2.id, "imported-key");
    let mut same_hash = new_key("bob", 1);
    same_hash.name = "copy".into();
    assert_err!(
        keys::create(&db, ADMIN, &same_hash).await,
        DbError::Conflict(_)
    );
    assert_err!(keys::create(&db, ADMIN, &named).await, DbError::Conflict(_));
    assert_err!(
        keys::create(&db, ADMIN, &new_key("nobody", 3)).await,
        DbError::Invalid(_)
    );

    let listed: Vec<String> = keys::list(&db, "alice")
        .await
        .expect("list")
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(listed, [k1.id.clone(), k2.id.clone()]);
    assert!(keys::list(&db, "bob").await.expect("bob's").is_empty());
    assert_err!(keys::list(&db, "nobody").await, DbError::NotFound(_));
    assert_eq!(keys::get(&db, &k1.id).await.expect("get"), k1);
    assert_err!(keys::get(&db, "key_missing").await, DbError::NotFound(_));

    let expiry = SystemTime::now() + Duration::from_secs(3600);
    let updated = keys::update(
        &db,
        ADMIN,
        &k1.id,
        &KeyUpdate {
            name: Some("renamed".into()),
            scopes: Some(Some(vec!["admin".into()])),
            expires_at: Some(Some(expiry)),
            status: None,
        },
    )
    .await
    .expect("update");
    assert_eq!(updated.name, "renamed");
    assert_eq!(updated.scopes, Some(vec!["admin".to_string()]));
    let drift = updated
        .expires_at
        .expect("expiry")
        .duration_since(expiry)
        .unwrap_or_else(|e| e.duration());
    assert!(
        drift < Duration::from_millis(1),
        "timestamptz keeps microseconds"
    );
    let cleared = keys::update(
        &db,
        ADMIN,
        &k1.id,
        &KeyUpdate {
            scopes: Some(None),
            expires_at: Some(None),
            ..KeyUpdate::default()
        },
    )
    .await
    .expect("clear");
    assert_eq!((cleared.scopes, cleared.expires_at), (None, None));
    assert_eq!(cleared.name, "renamed");
    assert_err!(
        keys::update(&db, ADMIN, "key_missing", &KeyUpdate::default()).await,
        DbError::NotFound(_)
    );

    let revoked = keys::revoke(&db, ADMIN, &k2.id).await.expect("revoke");
    assert_eq!(revoked.status, Status::Disabled);
    assert_err!(
        keys::revoke(&db, ADMIN, "key_missing").await,
        DbError::NotFound(_)
    );
    assert_eq!(
        audit_of(&db, "key", &k1.id).await,
        ["key.update", "key.update", "key.create"]
    );
    let details = &audit::list(&db, &AuditFilter::default())
        .await
        .expect("audit")[0]
        .details;
    assert!(
        !details.to_string().contains(&hash(2).to_hex()),
        "audit never holds hashes: {details}"
    );

    // One batch: duplicates keep the latest time, unknown ids are skipped, and an older
    // time never overwrites a newer one.
    // Whole seconds: timestamptz keeps microseconds, SystemTime nanoseconds.
    let now_secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs - 600);
    let t1 = t0 + Duration::from_secs(60);
    let touched = keys::touch_last_used(
        &db,
        &[
            (k1.id.clone(), t0),
            (k1.id.clone(), t1),
            (k2.id.clone(), t0),
            ("key_missing".into(), t1),
        ],
    )
    .await
    .expect("touch");
    assert_eq!(touched, 2);
    let seen = |k: keys::ApiKey| k.last_used_at.expect("last used");
    assert_eq!(seen(keys::get(&db, &k1.id).await.expect("k1")), t1);
    assert_eq!(seen(keys::get(&db, &k2.id).await.expect("k2")), t0);
    let older = keys::touch_last_used(&db, &[(k1.id.clone(), t0)])
        .await
        .expect("older");
    assert_eq!(older, 0);
    assert_eq!(seen(keys::get(&db, &k1.id).await.expect("k1")), t1);
    assert_eq!(keys::touch_last_used(&db, &[]).await.expect("empty"), 0);
}

#[tokio::test]
async fn rotation_keeps_both_keys_valid_until_the_grace_period_ends() {
    let (pg, db) = fresh().await;
    consumers::create(&db, ADMIN, &NewConsumer::new("alice"))
        .await
        .expect("consumer");
    let old = keys::create(&db, ADMIN, &new_key("alice", 1))
        .await
        .expect("key");
    let store = PgCredentialStore::new(db.clone());

    // A rotation whose new hash is taken changes nothing: the old key keeps no expiry.
    keys::create(&db, ADMIN, &new_key("alice", 9))
        .await
        .expect("other key");
    let clash = Rotation {
        hash: hash(9),
        prefix: "tg_prefix02".into(),
        grace: Duration::from_secs(2),
        expires_at: None,
    };
    assert_err!(
        keys::rotate(&db, ADMIN, &old.id, &clash).await,
        DbError::Conflict(_)
    );
    assert_eq!(keys::get(&db, &old.id).await.expect("old").expires_at, None);

    let grace = Duration::from_secs(2);
    let rotation = Rotation {
        hash: hash(2),
        prefix: "tg_prefix02".into(),
        grace,
        expires_at: None,
    };
    let started = SystemTime::now();
    let rotated = keys::rotate(&db, ADMIN, &old.id, &rotation)
        .await
        .expect("rotate");
    assert_eq!(rotated.new.rotated_from.as_deref(), Some(old.id.as_str()));
    assert_eq!(rotated.new.consumer_id, "alice");
    assert_eq!(rotated.new.name, old.name);
    assert_eq!(rotated.new.expires_at, None);
    let grace_end = rotated.old.expires_at.expect("old key now expires");
    assert!(grace_end > started && grace_end <= started + grace + Duration::from_secs(1));

    // Both keys resolve and are active and unexpired now ...
    for h in [hash(1), hash(2)] {
        let record = store.find_key(&h).await.expect("lookup").expect("found");
        assert_eq!(record.status, Status::Active);
        assert!(record.expires_at.is_none_or(|t| t > SystemTime::now()));
    }
    // ... and after the grace period only the new one is unexpired.
    tokio::time::sleep(
        grace_end
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let old_record = store
        .find_key(&hash(1))
        .await
        .expect("lookup")
        .expect("found");
    assert!(old_record.expires_at.expect("expiry") <= SystemTime::now());
    let new_record = store
        .find_key(&hash(2))
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(new_record.expires_at, None);
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM api_keys WHERE hash = '\\x{}' AND expires_at <= now()",
            hash(1).to_hex()
        ))
        .await,
        "1",
        "the database agrees the old key has expired"
    );

    // An expired, an already rotated, or a disabled key cannot be rotated.
    let again = Rotation {
        hash: hash(3),
        ..rotation.clone()
    };
    let e = keys::rotate(&db, ADMIN, &old.id, &again).await.unwrap_err();
    assert!(
        matches!(&e, DbError::Conflict(m) if m.contains("expired")),
        "{e}"
    );
    let fresh_key = keys::create(&db, ADMIN, &new_key("alice", 4))
        .await
        .expect("k4");
    keys::rotate(
        &db,
        ADMIN,
        &fresh_key.id,
        &Rotation {
            hash: hash(5),
            grace: Duration::from_secs(3600),
            ..rotation.clone()
        },
    )
    .await
    .expect("rotate k4");
    let e = keys::rotate(&db, ADMIN, &fresh_key.id, &again)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DbError::Conflict(m) if m.contains("already rotated")),
        "{e}"
    );
    keys::revoke(&db, ADMIN, &rotated.new.id)
        .await
        .expect("revoke");
    let e = keys::rotate(&db, ADMIN, &rotated.new.id, &again)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DbError::Conflict(m) if m.contains("disabled")),
        "{e}"
    );
    assert_err!(
        keys::rotate(&db, ADMIN, "key_missing", &again).await,
        DbError::NotFound(_)
    );
    let too_long = Rotation {
        grace: Duration::from_secs(400 * 86_400),
        ..again.clone()
    };
    assert_err!(
        keys::rotate(&db, ADMIN, &fresh_key.id, &too_long).await,
        DbError::Invalid(_)
    );

    // A key already expiring sooner than the grace end keeps its earlier expiry.
    let mut soon = new_key("alice", 6);
    let soon_at = SystemTime::now() + Duration::from_secs(30);
    soon.expires_at = Some(soon_at);
    let soon = keys::create(&db, ADMIN, &soon).await.expect("k6");
    let r = keys::rotate(
        &db,
        ADMIN,
        &soon.id,
        &Rotation {
            hash: hash(7),
            grace: Duration::from_secs(3600),
            ..rotation
        },
    )
    .await
    .expect("rotate k6");
    assert_eq!(r.old.expires_at, soon.expires_at);
    assert_eq!(
        audit_of(&db, "key", &soon.id).await,
        ["key.rotate", "key.create"]
    );
}

#[tokio::test]
async fn users_are_found_by_email_in_any_case() {
    let (_pg, db) = fresh().await;
    consumers::create(&db, ADMIN, &NewConsumer::new("alice"))
        .await
        .expect("consumer");
    let user = users::create(
        &db,
        ADMIN,
        &NewUser {
            email: "  Alice@Example.COM ".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            consumer_id: Some("alice".into()),
        },
    )
    .await
    .expect("create");
    assert!(user.id.starts_with("usr_"));
    assert_eq!(user.email, "alice@example.com");
    assert!(!format!("{user:?}").contains("argon2id"));
    let found = users::find_by_email(&db, "ALICE@example.com")
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found, user);
    assert_eq!(users::get(&db, &user.id).await.expect("get"), user);
    assert_eq!(
        users::find_by_email(&db, "bob@example.com")
            .await
            .expect("find"),
        None
    );
    assert_err!(users::get(&db, "usr_missing").await, DbError::NotFound(_));

    let again = NewUser {
        email: "alice@EXAMPLE.com".into(),
        password_hash: "$argon2id$other".into(),
        consumer_id: None,
    };
    assert_err!(
        users::create(&db, ADMIN, &again).await,
        DbError::Conflict(_)
    );
    let bad_email = NewUser {
        email: "not-an-address".into(),
        ..again.clone()
    };
    assert_err!(
        users::create(&db, ADMIN, &bad_email).await,
        DbError::Invalid(_)
    );
    let orphan = NewUser {
        email: "carol@example.com".into(),
        consumer_id: Some("nobody".into()),
        ..again.clone()
    };
    assert_err!(
        users::create(&db, ADMIN, &orphan).await,
        DbError::Invalid(_)
    );
    let no_hash = NewUser {
        email: "dan@example.com".into(),
        password_hash: String::new(),
        consumer_id: None,
    };
    assert_err!(
        users::create(&db, ADMIN, &no_hash).await,
        DbError::Invalid(_)
    );
    assert_eq!(audit_of(&db, "user", &user.id).await, ["user.create"]);
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    let (pg, db) = fresh().await;
    let user = users::create(
        &db,
        ADMIN,
        &NewUser {
            email: "ann@example.com".into(),
            password_hash: "$argon2id$x".into(),
            consumer_id: None,
        },
    )
    .await
    .expect("user");
    let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
    let first = tokens::insert(
        &db,
        &NewRefreshToken {
            user_id: user.id.clone(),
            family_id: None,
            hash: TokenHash::of("token-1"),
            expires_at: in_an_hour,
        },
    )
    .await
    .expect("insert");
    assert!(first.family_id.starts_with("fam_"));
    assert!(first.is_usable(SystemTime::now()));
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM refresh_tokens WHERE token_hash = '\\x{}'",
            hex(&TokenHash::of("token-1").0)
        ))
        .await,
        "1",
        "stored as its SHA-256"
    );
    assert_eq!(
        tokens::find_by_hash(&db, &TokenHash::of("token-1"))
            .await
            .expect("find"),
        Some(first.clone())
    );
    assert_eq!(
        tokens::find_by_hash(&db, &TokenHash::of("nope"))
            .await
            .expect("find"),
        None
    );
    assert_err!(
        tokens::insert(
            &db,
            &NewRefreshToken {
                user_id: "usr_missing".into(),
                family_id: None,
                hash: TokenHash::of("token-x"),
                expires_at: in_an_hour,
            }
        )
        .await,
        DbError::Invalid(_)
    );

    let second = tokens::rotate(
        &db,
        &TokenHash::of("token-1"),
        &TokenHash::of("token-2"),
        in_an_hour,
    )
    .await
    .expect("rotate");
    assert_eq!(second.family_id, first.family_id);
    assert_eq!(second.user_id, user.id);
    let used = tokens::find_by_hash(&db, &TokenHash::of("token-1"))
        .await
        .expect("find")
        .expect("old row kept");
    assert!(used.revoked_at.is_some());
    assert_eq!(used.replaced_by.as_deref(), Some(second.id.as_str()));
    assert_err!(
        tokens::rotate(&db, &TokenHash::of("nope"), &TokenHash::of("x"), in_an_hour).await,
        DbError::NotFound(_)
    );

    // Presenting the used token again revokes the whole family, the live token too.
    let e = tokens::rotate(
        &db,
        &TokenHash::of("token-1"),
        &TokenHash::of("token-3"),
        in_an_hour,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, DbError::Conflict(m) if m.contains("family")),
        "{e}"
    );
    let second_now = tokens::find_by_hash(&db, &TokenHash::of("token-2"))
        .await
        .expect("find")
        .expect("row");
    assert!(
        second_now.revoked_at.is_some(),
        "the live token was revoked"
    );
    assert_eq!(
        tokens::find_by_hash(&db, &TokenHash::of("token-3"))
            .await
            .expect("find"),
        None,
        "no token was issued for the reused one"
    );
    assert_eq!(
        audit_of(&db, "token_family", &first.family_id).await,
        ["token.reuse_detected"]
    );

    // An explicit logout revokes a family; an expired token cannot be rotated.
    let other = tokens::insert(
        &db,
        &NewRefreshToken {
            user_id: user.id.clone(),
            family_id: Some("fam_custom".into()),
            hash: TokenHash::of("token-4"),
            expires_at: in_an_hour,
        },
    )
    .await
    .expect("second login");
    assert_eq!(other.family_id, "fam_custom");
    tokens::insert(
        &db,
        &NewRefreshToken {
            user_id: user.id.clone(),
            family_id: Some("fam_custom".into()),
            hash: TokenHash::of("token-5"),
            expires_at: in_an_hour,
        },
    )
    .await
    .expect("same family");
    assert_eq!(
        tokens::revoke_family(&db, ADMIN, "fam_custom")
            .await
            .expect("revoke"),
        2
    );
    assert_eq!(
        tokens::revoke_family(&db, ADMIN, "fam_custom")
            .await
            .expect("again"),
        0
    );
    assert_err!(
        tokens::revoke_family(&db, ADMIN, "fam_missing").await,
        DbError::NotFound(_)
    );
    tokens::insert(
        &db,
        &NewRefreshToken {
            user_id: user.id.clone(),
            family_id: None,
            hash: TokenHash::of("token-old"),
            expires_at: SystemTime::now() - Duration::from_secs(1),
        },
    )
    .await
    .expect("expired token");
    assert_err!(
        tokens::rotate(
            &db,
            &TokenHash::of("token-old"),
            &TokenHash::of("token-6"),
            in_an_hour
        )
        .await,
        DbError::Invalid(_)
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn usage_upserts_add_up_across_batches() {
    let (pg, db) = fresh().await;
    let day1: Day = "2024-02-28".parse().expect("day");
    let day2 = day1.add_days(1);
    let delta =
        |day, consumer: &str, key: Option<&str>, route: &str, allowed, limited| UsageDelta {
            day,
            consumer_id: consumer.into(),
            key_id: key.map(str::to_string),
            route: route.into(),
            allowed,
            limited,
        };
    // Two deltas for the same row in one batch are summed, not an error.
    let written = usage::record(
        &db,
        "batch-1",
        &[
            delta(day1, "alice", Some("k1"), "api", 10, 1),
            delta(day1, "alice", Some("k1"), "api", 5, 0),
            delta(day1, "alice", None, "api", 3, 0),
            delta(day2, "bob", Some("k2"), "web", 7, 2),
        ],
    )
    .await
    .expect("first batch");
    assert_eq!(written, 3);
    let second = [
        delta(day1, "alice", Some("k1"), "api", 100, 4),
        delta(day2, "alice", Some("k1"), "web", 1, 0),
    ];
    usage::record(&db, "batch-2", &second)
        .await
        .expect("second batch");
    // A batch retried under the same id (its first answer was lost) is not added again.
    assert_eq!(
        usage::record(&db, "batch-2", &second).await.expect("retry"),
        0
    );
    assert_eq!(usage::record(&db, "batch-3", &[]).await.expect("empty"), 0);

    let alice = usage::query(
        &db,
        &UsageQuery {
            consumer_id: Some("alice".into()),
            ..UsageQuery::days(day1, day2)
        },
    )
    .await
    .expect("alice");
    let summary: Vec<(String, Option<String>, String, u64, u64)> = alice
        .iter()
        .map(|r| {
            (
                r.day.to_string(),
                r.key_id.clone(),
                r.route.clone(),
                r.allowed,
                r.limited,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("2024-02-28".to_string(), None, "api".to_string(), 3, 0),
            (
                "2024-02-28".to_string(),
                Some("k1".to_string()),
                "api".to_string(),
                115,
                5
            ),
            (
                "2024-02-29".to_string(),
                Some("k1".to_string()),
                "web".to_string(),
                1,
                0
            ),
        ]
    );
    let k1 = usage::query(
        &db,
        &UsageQuery {
            key_id: Some("k1".into()),
            route: Some("api".into()),
            ..UsageQuery::days(day1, day2)
        },
    )
    .await
    .expect("k1");
    assert_eq!(k1.len(), 1);
    assert_eq!(k1[0].allowed, 115);
    let day2_only = usage::query(&db, &UsageQuery::days(day2, day2))
        .await
        .expect("day2");
    assert_eq!(day2_only.len(), 2);
    assert!(day2_only.iter().all(|r| r.day == day2));
    assert_err!(
        usage::query(&db, &UsageQuery::days(day2, day1)).await,
        DbError::Invalid(_)
    );
    assert_eq!(
        pg.psql("SELECT day FROM usage WHERE consumer_id = 'bob'")
            .await,
        "2024-02-29",
        "days are stored as dates"
    );
}

/// A listener that forwards changes to a channel and counts resyncs.
fn listen(
    url: &str,
) -> (
    tollgate::db::listen::Listener,
    mpsc::UnboundedReceiver<Change>,
    Arc<AtomicUsize>,
) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let resyncs = Arc::new(AtomicUsize::new(0));
    let counted = resyncs.clone();
    let listener = spawn_listener_with(
        url,
        &DatabaseTls::Disable,
        ListenerOptions {
            max_backoff: Duration::from_secs(1),
            ..ListenerOptions::default()
        },
        move |change| {
            let _ = sender.send(change);
        },
        move || {
            counted.fetch_add(1, Ordering::SeqCst);
        },
    )
    .expect("spawn listener");
    (listener, receiver, resyncs)
}

async fn next_change(changes: &mut mpsc::UnboundedReceiver<Change>) -> Change {
    tokio::time::timeout(Duration::from_secs(5), changes.recv())
        .await
        .expect("no change notification within 5 s")
        .expect("listener channel closed")
}

#[tokio::test]
async fn every_change_to_keys_consumers_and_plans_reaches_a_listener() {
    let (pg, db) = fresh().await;
    let (_listener, mut changes, resyncs) = listen(&pg.url());
    wait_until(Duration::from_secs(10), "the first resync", || {
        resyncs.load(Ordering::SeqCst) == 1
    })
    .await;

    let plan = || Change::Plan {
        name: "gold".into(),
    };
    let alice = || Change::Consumer { id: "alice".into() };
    let key = |n| Change::Key { hash: hash(n) };
    plans::create(&db, ADMIN, &gold()).await.expect("plan");
    consumers::create(&db, ADMIN, &consumer_on("alice", Some("gold")))
        .await
        .expect("consumer");
    // A failed change sends nothing; junk on the channel is skipped.
    assert_err!(
        consumers::create(&db, ADMIN, &consumer_on("alice", None)).await,
        DbError::Conflict(_)
    );
    pg.psql("NOTIFY tollgate_changes, 'not json'; NOTIFY tollgate_changes, '{\"kind\":\"user\"}'")
        .await;
    let k = keys::create(&db, ADMIN, &new_key("alice", 1))
        .await
        .expect("key");
    keys::update(
        &db,
        ADMIN,
        &k.id,
        &KeyUpdate {
            name: Some("renamed".into()),
            ..KeyUpdate::default()
        },
    )
    .await
    .expect("key update");
    let rotated = keys::rotate(
        &db,
        ADMIN,
        &k.id,
        &Rotation {
            hash: hash(2),
            prefix: "tg_prefix02".into(),
            grace: Duration::from_secs(60),
            expires_at: None,
        },
    )
    .await
    .expect("rotate");
    keys::revoke(&db, ADMIN, &rotated.new.id)
        .await
        .expect("revoke");
    plans::update(&db, ADMIN, "gold", &PlanUpdate::default())
        .await
        .expect("plan update");
    consumers::update(
        &db,
        ADMIN,
        "alice",
        &ConsumerUpdate {
            plan: Some(None),
            ..ConsumerUpdate::default()
        },
    )
    .await
    .expect("consumer update");
    consumers::delete(&db, ADMIN, "alice")
        .await
        .expect("consumer delete");
    plans::delete(&db, ADMIN, "gold")
        .await
        .expect("plan delete");

    let expected = [
        plan(),
        alice(),
        key(1),
        key(1),
        key(1),
        key(2),
        key(2),
        plan(),
        alice(),
        alice(),
        plan(),
    ];
    let mut received = Vec::new();
    for _ in 0..expected.len() {
        received.push(next_change(&mut changes).await);
    }
    assert_eq!(received, expected);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), changes.recv())
            .await
            .is_err(),
        "no further notifications"
    );
    assert_eq!(resyncs.load(Ordering::SeqCst), 1, "no reconnect happened");
}

#[tokio::test]
async fn listener_reconnects_after_a_restart_and_resyncs() {
    let (mut pg, db) = fresh().await;
    let (_listener, mut changes, resyncs) = listen(&pg.url());
    wait_until(Duration::from_secs(10), "the first resync", || {
        resyncs.load(Ordering::SeqCst) == 1
    })
    .await;

    pg.restart().await;
    wait_until(
        Duration::from_secs(15),
        "a resync after the restart",
        || resyncs.load(Ordering::SeqCst) >= 2,
    )
    .await;
    // Listening again: a change made after the restart arrives (through a pool whose old
    // connections died with the server).
    plans::create(&db, ADMIN, &gold())
        .await
        .expect("plan after restart");
    assert_eq!(
        next_change(&mut changes).await,
        Change::Plan {
            name: "gold".into()
        }
    );
}

#[tokio::test]
async fn credential_store_finds_keys_with_their_consumer_and_fails_loudly_when_down() {
    let (mut pg, db) = fresh().await;
    plans::create(&db, ADMIN, &gold()).await.expect("plan");
    let mut alice = consumer_on("alice", Some("gold"));
    alice.scopes = vec!["read".into(), "write".into()];
    consumers::create(&db, ADMIN, &alice)
        .await
        .expect("consumer");
    let inherits = keys::create(&db, ADMIN, &new_key("alice", 1))
        .await
        .expect("k1");
    let mut narrow = new_key("alice", 2);
    narrow.scopes = Some(vec!["read".into()]);
    let narrow = keys::create(&db, ADMIN, &narrow).await.expect("k2");
    keys::revoke(&db, ADMIN, &narrow.id)
        .await
        .expect("revoke k2");

    let store = PgCredentialStore::new(db.clone());
    let record = store
        .find_key(&hash(1))
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(record.key_id, inherits.id);
    assert_eq!(record.prefix, "tg_prefix01");
    assert_eq!(record.status, Status::Active);
    assert_eq!(record.expires_at, None);
    assert_eq!(record.scopes, ["read", "write"], "the consumer's scopes");
    assert_eq!(record.consumer.id, "alice");
    assert_eq!(record.consumer.plan.as_deref(), Some("gold"));
    assert_eq!(record.consumer.status, Status::Active);
    let record = store
        .find_key(&hash(2))
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(record.scopes, ["read"], "the key's own scopes");
    assert_eq!(
        record.status,
        Status::Disabled,
        "disabled keys resolve; auth refuses them"
    );
    assert!(store.find_key(&hash(3)).await.expect("lookup").is_none());
    let consumer = store
        .find_consumer("alice")
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(consumer.scopes, ["read", "write"]);
    assert!(store.find_consumer("bob").await.expect("lookup").is_none());
    // Lookups write nothing.
    assert_eq!(
        pg.psql("SELECT count(*) FROM api_keys WHERE last_used_at IS NOT NULL")
            .await,
        "0"
    );

    // Down: an error (the proxy answers 503), never "no such key".
    pg.stop().await;
    let started = std::time::Instant::now();
    assert!(store.find_key(&hash(1)).await.is_err());
    assert!(store.find_consumer("alice").await.is_err());
    assert_err!(db.health_check().await, DbError::Unavailable(_));
    assert_err!(Db::connect(&pg.url(), 1).await, DbError::Unavailable(_));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failing is fast"
    );
    pg.start_again().await;
    assert!(store
        .find_key(&hash(1))
        .await
        .expect("lookup after restart")
        .is_some());
}

/// The usage recorder writes every count exactly once: a batch whose write failed is kept
/// and retried, and a flush cancelled at any point (before, during or after the commit) is
/// completed by the next one under the same batch id, never counted twice.
#[tokio::test]
async fn usage_flushes_count_exactly_once_through_failures_and_cancellations() {
    use tollgate::usage::UsageRecorder;
    let (_pg, db) = fresh().await;
    let recorder = UsageRecorder::default();
    let mut sent = 0u64;

    // The database cannot be reached: the batch stays.
    for _ in 0..5 {
        recorder.record("zoe", Some("zoe-key"), "api", false);
        sent += 1;
    }
    let unreachable = Db::lazy(
        "postgres://postgres@127.0.0.1:1/none",
        &tollgate::db::DbOptions {
            pool_size: 1,
            connect_timeout: std::time::Duration::from_millis(200),
            wait_timeout: std::time::Duration::from_millis(200),
            ..Default::default()
        },
    )
    .expect("pool");
    assert!(recorder.flush(&unreachable).await.is_err());
    assert_eq!(recorder.pending_rows(), 1, "the failed batch is kept");
    // One successful flush writes the kept batch and what was counted since.
    for _ in 0..2 {
        recorder.record("zoe", Some("zoe-key"), "api", false);
        sent += 1;
    }
    assert_eq!(
        recorder.pending_rows(),
        2,
        "the batch and the new counter row"
    );
    recorder.flush(&db).await.expect("flush");
    assert_eq!(recorder.pending_rows(), 0);

    // Flushes cut short at many points, with more requests in between.
    for micros in (0..200u64).map(|i| 1 + i * 40) {
        for _ in 0..3 {
            recorder.record("zoe", Some("zoe-key"), "api", false);
            sent += 1;
        }
        let _ = tokio::time::timeout(
            std::time::Duration::from_micros(micros),
            recorder.flush(&db),
        )
        .await;
    }
    recorder.flush(&db).await.expect("flush");
    assert_eq!(recorder.pending_rows(), 0, "one flush writes everything");
    let today = Day::today();
    let rows = usage::query(
        &db,
        &UsageQuery {
            consumer_id: Some("zoe".into()),
            ..UsageQuery::days(today, today)
        },
    )
    .await
    .expect("query");
    let counted: u64 = rows.iter().map(|r| r.allowed).sum();
    assert_eq!(counted, sent, "{rows:?}");
}
