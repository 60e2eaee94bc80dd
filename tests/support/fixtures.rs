//! Rows the database tests start from: a consumer with one API key, a plan of one window.

use tollgate::auth::api_key::{generate, KeyHasher};
use tollgate::db::{self, Db};

/// Creates consumer `id` on `plan` with one key (id `<id>-key`) hashed under `pepper`;
/// returns the key.
pub async fn consumer_with_key(db: &Db, pepper: &str, id: &str, plan: Option<&str>) -> String {
    let mut consumer = db::consumers::NewConsumer::new(id);
    consumer.plan = plan.map(str::to_string);
    db::consumers::create(db, "test", &consumer)
        .await
        .expect("consumer");
    let key = generate(&ring::rand::SystemRandom::new()).expect("random");
    db::keys::create(
        db,
        "test",
        &db::keys::NewApiKey {
            id: Some(format!("{id}-key")),
            consumer_id: id.to_string(),
            name: "test".into(),
            prefix: key.prefix.clone(),
            hash: KeyHasher::new(pepper.as_bytes()).hash(&key.secret),
            scopes: None,
            expires_at: None,
        },
    )
    .await
    .expect("key");
    key.secret
}

/// Creates plan `name`: a fixed window of `requests` per hour.
pub async fn hourly_plan(db: &Db, name: &str, requests: u64) {
    db::plans::create(
        db,
        "test",
        &db::plans::NewPlan {
            name: name.into(),
            algorithm: db::plans::Algorithm::FixedWindow,
            limits: vec![db::plans::Limit {
                requests,
                per_seconds: 3600,
                burst: None,
            }],
            concurrency: None,
            block_for_seconds: None,
        },
    )
    .await
    .expect("plan");
}
