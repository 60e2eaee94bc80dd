//! Change notifications: what a mutating call announces on the [`CHANNEL`] so every
//! gateway instance can evict its cached copy.
//!
//! Payloads are small JSON objects: `{"kind":"key","hash":"<64 hex>"}`,
//! `{"kind":"consumer","id":"alice"}`, `{"kind":"plan","name":"gold"}`. They are sent
//! with `pg_notify` inside the transaction that makes the change, so listeners hear of it
//! exactly when it commits, and never for a rolled-back change.

use super::DbError;
use crate::auth::api_key::KeyHash;
use deadpool_postgres::GenericClient;
use serde::Deserialize;
use serde_json::json;

/// The `LISTEN`/`NOTIFY` channel.
pub const CHANNEL: &str = "tollgate_changes";

/// Something a cache may hold a stale copy of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The API key with this hash changed (created, updated, rotated, revoked).
    Key {
        /// The key's stored hash.
        hash: KeyHash,
    },
    /// The consumer changed or was deleted; its keys' cached records embed it too.
    Consumer {
        /// The consumer's id.
        id: String,
    },
    /// The plan changed or was deleted.
    Plan {
        /// The plan's name.
        name: String,
    },
}

/// Why a payload was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseChangeError {
    /// Not JSON, or not an object with string fields.
    #[error("payload is not a change object: {0}")]
    Malformed(String),
    /// A `kind` this binary does not know (a newer release may send it).
    #[error("unknown change kind {0:?}")]
    UnknownKind(String),
    /// The field that kind needs is missing or malformed.
    #[error("{kind} change without a valid {field:?}")]
    MissingField {
        /// The change's kind.
        kind: &'static str,
        /// The field it lacks.
        field: &'static str,
    },
}

/// The wire form: every field optional so one struct reads every kind.
#[derive(Deserialize)]
struct RawChange {
    kind: String,
    hash: Option<String>,
    id: Option<String>,
    name: Option<String>,
}

impl Change {
    /// The JSON payload sent on the channel.
    pub fn to_payload(&self) -> String {
        match self {
            Change::Key { hash } => json!({"kind": "key", "hash": hash.to_hex()}),
            Change::Consumer { id } => json!({"kind": "consumer", "id": id}),
            Change::Plan { name } => json!({"kind": "plan", "name": name}),
        }
        .to_string()
    }

    /// Reads a payload sent by [`to_payload`](Self::to_payload).
    pub fn parse(payload: &str) -> Result<Change, ParseChangeError> {
        let raw: RawChange = serde_json::from_str(payload)
            .map_err(|e| ParseChangeError::Malformed(e.to_string()))?;
        let missing = |kind, field| ParseChangeError::MissingField { kind, field };
        match raw.kind.as_str() {
            "key" => {
                let hash = raw
                    .hash
                    .as_deref()
                    .and_then(KeyHash::from_hex)
                    .ok_or(missing("key", "hash"))?;
                Ok(Change::Key { hash })
            }
            "consumer" => {
                let id = raw.id.filter(|s| !s.is_empty());
                Ok(Change::Consumer {
                    id: id.ok_or(missing("consumer", "id"))?,
                })
            }
            "plan" => {
                let name = raw.name.filter(|s| !s.is_empty());
                Ok(Change::Plan {
                    name: name.ok_or(missing("plan", "name"))?,
                })
            }
            _ => Err(ParseChangeError::UnknownKind(raw.kind)),
        }
    }
}

/// Queues `change` on [`CHANNEL`]; delivered when the surrounding transaction commits.
pub(crate) async fn notify(client: &impl GenericClient, change: &Change) -> Result<(), DbError> {
    client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &change.to_payload()],
        )
        .await
        .map_err(|e| DbError::from_pg("send change notification", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let changes = [
            Change::Key {
                hash: KeyHash([0xab; 32]),
            },
            Change::Consumer { id: "alice".into() },
            Change::Plan {
                name: "gold \"plus\"".into(),
            },
        ];
        for change in changes {
            assert_eq!(Change::parse(&change.to_payload()), Ok(change));
        }
    }

    #[test]
    fn documented_shapes_parse() {
        let hex = "ab".repeat(32);
        assert_eq!(
            Change::parse(&format!(r#"{{"kind":"key","hash":"{hex}"}}"#)),
            Ok(Change::Key {
                hash: KeyHash([0xab; 32])
            })
        );
        assert_eq!(
            Change::parse(r#"{"kind":"consumer","id":"alice","extra":1}"#),
            Ok(Change::Consumer { id: "alice".into() })
        );
        assert_eq!(
            Change::parse(r#"{"name":"gold","kind":"plan"}"#),
            Ok(Change::Plan {
                name: "gold".into()
            })
        );
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        let bad = [
            "",
            "not json",
            "[]",
            "null",
            r#"{"kind":1}"#,
            r#"{"hash":"00"}"#,
            r#"{"kind":"key"}"#,
            r#"{"kind":"key","hash":"zz"}"#,
            r#"{"kind":"key","hash":"abab"}"#,
            r#"{"kind":"consumer"}"#,
            r#"{"kind":"consumer","id":""}"#,
            r#"{"kind":"consumer","id":7}"#,
            r#"{"kind":"plan","id":"gold"}"#,
        ];
        for payload in bad {
            assert!(Change::parse(payload).is_err(), "{payload}");
        }
        assert_eq!(
            Change::parse(r#"{"kind":"user","id":"u1"}"#),
            Err(ParseChangeError::UnknownKind("user".into()))
        );
    }

    #[test]
    fn non_ascii_hash_does_not_panic() {
        // 64 bytes but not ASCII: from_hex must refuse, not slice inside a character.
        let payload = format!(r#"{{"kind":"key","hash":"{}"}}"#, "é".repeat(32));
        assert!(Change::parse(&payload).is_err());
    }
}
