//! The Lua script and how to call it: key layout, arguments and reply (pure; the
//! network side is in `redis.rs`).
//!
//! Key layout, per subject key `K` (with `%`, `{` and `}` percent-encoded, and the
//! empty key written `%00`, so the hash tag is always exactly the encoded `K`):
//!
//! * `tg:{K}:w`: a hash with every window of every policy on `K`, fields
//!   `<policy>:<period ms>:<letter>` (see each algorithm's file in `lua/`);
//! * `tg:{K}:l`: a sorted set of the leases in flight (lease id, scored by the time
//!   taken in ms), for concurrency caps.
//!
//! The `{K}` hash tag puts both keys of a subject in one Redis Cluster slot. Both
//! names are known from `K` alone, so an operator reset is one `DEL`.

use std::sync::{Arc, LazyLock, OnceLock};

use fred::bytes_utils::Str;
use fred::types::Value;

use super::policy::{Policy, Subject};
use super::window::Outcome;

/// The whole script: the three algorithms, then the entry point.
pub(crate) const SOURCE: &str = concat!(
    include_str!("../../lua/fixed_window.lua"),
    "\n",
    include_str!("../../lua/sliding_window.lua"),
    "\n",
    include_str!("../../lua/token_bucket.lua"),
    "\n",
    include_str!("../../lua/limit.lua"),
);

/// The script's SHA-1, for `EVALSHA`.
pub(crate) static SHA1: LazyLock<Str> = LazyLock::new(|| fred::util::sha1_hash(SOURCE).into());

/// The script's source as a Redis argument (for `EVAL` after a `NOSCRIPT`).
pub(crate) static SOURCE_ARG: LazyLock<Str> = LazyLock::new(|| Str::from_static(SOURCE));

/// Numbers per entry in the reply: allowed, remaining, reset, retry, tag.
const FIELDS_PER_ENTRY: usize = 5;

/// The Redis keys of one subject, and their Cluster slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubjectKeys {
    /// `tg:{K}:w`.
    pub windows: String,
    /// `tg:{K}:l`.
    pub leases: String,
    /// The Cluster hash slot of both.
    pub slot: u16,
}

impl SubjectKeys {
    /// The keys of subject key `key`.
    pub(crate) fn new(key: &str) -> Self {
        let mut windows = String::with_capacity(key.len() + 8);
        windows.push_str("tg:{");
        if key.is_empty() {
            // An empty hash tag would not be a tag: Redis would hash the whole name.
            // No key encodes to "%00" ('%' always becomes "%25").
            windows.push_str("%00");
        }
        for c in key.chars() {
            match c {
                '%' => windows.push_str("%25"),
                '{' => windows.push_str("%7B"),
                '}' => windows.push_str("%7D"),
                c => windows.push(c),
            }
        }
        windows.push('}');
        let mut leases = windows.clone();
        windows.push_str(":w");
        leases.push_str(":l");
        let slot = fred::util::redis_keyslot(windows.as_bytes());
        SubjectKeys {
            windows,
            leases,
            slot,
        }
    }
}

/// What a call of the script does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Check every window; count in all of them if all allow.
    Acquire,
    /// Check every window; count nothing.
    Peek,
    /// Take back what an acquire counted (windows identified by their tags), and its
    /// leases.
    Undo,
}

impl Mode {
    fn code(self) -> &'static str {
        match self {
            Mode::Acquire => "a",
            Mode::Peek => "p",
            Mode::Undo => "u",
        }
    }
}

/// One call's parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub mode: Mode,
    /// A peek checks whether a request of cost 1 would fit.
    pub cost: u64,
    pub lease_id: &'a str,
    pub lease_ttl_ms: u64,
}

/// A policy's script arguments for an acquire or a peek (every tag 0), built on first use
/// and kept with the policy, so a request copies them instead of building them.
#[derive(Default)]
pub(crate) struct PolicyArgs(OnceLock<Arc<[Value]>>);

impl PolicyArgs {
    /// The arguments of `policy`, whose cache this is.
    fn get(&self, policy: &Policy) -> &[Value] {
        let args = self.0.get_or_init(|| {
            let mut args = Vec::with_capacity(5 + 3 * policy.windows.len());
            push_policy(policy, &mut std::iter::empty(), &mut args);
            args.into()
        });
        // Policy fields are public: one changed after its first use would leave this stale.
        debug_assert!({
            let mut fresh = Vec::new();
            push_policy(policy, &mut std::iter::empty(), &mut fresh);
            *fresh == **args
        });
        args
    }
}

impl Clone for PolicyArgs {
    /// Empty: the clone builds its own (it may be changed before its first use).
    fn clone(&self) -> Self {
        PolicyArgs::default()
    }
}

impl PartialEq for PolicyArgs {
    /// A cache never makes two policies differ.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for PolicyArgs {}

impl std::fmt::Debug for PolicyArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyArgs")
    }
}

/// Appends `policy`'s arguments: algorithm, name, cap, block, window count, then per
/// window its limit, period and the next of `tags` (0 once they run out).
fn push_policy(policy: &Policy, tags: &mut dyn Iterator<Item = u64>, args: &mut Vec<Value>) {
    args.push(Value::String(Str::from_static(policy.algorithm.code())));
    args.push(Value::String(Str::from(&*policy.name)));
    args.push(match policy.concurrency {
        Some(cap) => int(cap),
        None => Value::Integer(-1),
    });
    args.push(int(policy.block_ms()));
    args.push(int(policy.windows.len() as u64));
    for window in &policy.windows {
        args.push(int(window.limit));
        args.push(int(window.period_ms()));
        args.push(int(tags.next().unwrap_or(0)));
    }
}

/// One decision for the script to make: its KEYS and its ARGV. Several go to Redis as
/// one script call (see [`batch_arguments`]), decided in turn.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScriptCall {
    /// Both keys of each subject.
    pub keys: Vec<Value>,
    /// Mode, cost, lease id, lease ttl, subject count, then each subject's policy.
    pub args: Vec<Value>,
}

impl ScriptCall {
    /// The call `call` for the subjects `subjects` whose keys are `keys`. `tags` has one
    /// tag per rate window, in order (undo only; ignored otherwise).
    pub(crate) fn new(
        call: &Call<'_>,
        subjects: &[Subject<'_>],
        keys: &[&SubjectKeys],
        tags: &[u64],
    ) -> Self {
        let mut key_args = Vec::with_capacity(2 * keys.len());
        for k in keys {
            key_args.push(Value::from(k.windows.as_str()));
            key_args.push(Value::from(k.leases.as_str()));
        }
        let windows: usize = subjects.iter().map(|s| s.policy.windows.len()).sum();
        let mut args = Vec::with_capacity(5 + 5 * subjects.len() + 3 * windows);
        args.push(Value::String(Str::from_static(call.mode.code())));
        args.push(int(call.cost));
        args.push(Value::from(call.lease_id));
        args.push(int(call.lease_ttl_ms));
        args.push(int(subjects.len() as u64));
        let mut tags = tags.iter().copied();
        for subject in subjects {
            match call.mode {
                Mode::Undo => push_policy(subject.policy, &mut tags, &mut args),
                Mode::Acquire | Mode::Peek => {
                    args.extend_from_slice(subject.policy.script_args.get(subject.policy))
                }
            }
        }
        ScriptCall {
            keys: key_args,
            args,
        }
    }
}

/// The arguments of one script call deciding `calls` in turn: a placeholder for the
/// script's SHA-1 (or source), `numkeys`, every call's KEYS, the number of calls, then
/// every call's ARGV.
pub(crate) fn batch_arguments(calls: &[&ScriptCall]) -> Vec<Value> {
    let keys: usize = calls.iter().map(|c| c.keys.len()).sum();
    let args: usize = calls.iter().map(|c| c.args.len()).sum();
    let mut out = Vec::with_capacity(3 + keys + args);
    out.push(Value::Null);
    out.push(int(keys as u64));
    for call in calls {
        out.extend_from_slice(&call.keys);
    }
    out.push(int(calls.len() as u64));
    for call in calls {
        out.extend_from_slice(&call.args);
    }
    out
}

/// Splits the reply of a script call deciding `calls` calls into one reply per call.
pub(crate) fn split_batch_reply(value: Value, calls: usize) -> Result<Vec<Value>, String> {
    match value {
        Value::Array(replies) if replies.len() == calls => Ok(replies),
        Value::Array(replies) => Err(format!("expected {calls} replies, got {}", replies.len())),
        other => Err(format!("expected an array of replies, got {other:?}")),
    }
}

/// A Redis integer argument. Every number passed is at most 2^53 (validated limits,
/// costs and caps) or a millisecond time, so it fits in an i64; saturate regardless.
fn int(n: u64) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The script's answer to an acquire or a peek.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// Every entry allowed (and, for an acquire, the request was counted).
    pub all_allowed: bool,
    /// Redis's clock (ms).
    pub now_ms: u64,
    /// One per entry: each subject's windows, then its cap.
    pub outcomes: Vec<Outcome>,
}

/// Reads the script's reply, expecting `entries` entries.
pub(crate) fn parse_reply(value: Value, entries: usize) -> Result<Reply, String> {
    let Value::Array(items) = value else {
        return Err(format!("expected an array, got {value:?}"));
    };
    if items.len() != 2 + FIELDS_PER_ENTRY * entries {
        return Err(format!(
            "expected {} numbers for {entries} entries, got {}",
            2 + FIELDS_PER_ENTRY * entries,
            items.len()
        ));
    }
    let mut numbers = Vec::with_capacity(items.len());
    for item in &items {
        match item {
            Value::Integer(n) => numbers.push(u64::try_from(*n).unwrap_or(0)),
            other => return Err(format!("expected an integer, got {other:?}")),
        }
    }
    let outcomes = numbers[2..]
        .chunks_exact(FIELDS_PER_ENTRY)
        .map(|n| Outcome {
            allowed: n[0] == 1,
            remaining: n[1],
            reset_ms: n[2],
            retry_ms: n[3],
            tag: n[4],
        })
        .collect();
    Ok(Reply {
        all_allowed: numbers[0] == 1,
        now_ms: numbers[1],
        outcomes,
    })
}

/// The tags of the rate windows among `outcomes` (concurrency entries skipped), in
/// the order [`arguments`] expects them for an undo.
pub(crate) fn window_tags(subjects: &[Subject<'_>], outcomes: &[Outcome]) -> Vec<u64> {
    let mut tags = Vec::with_capacity(outcomes.len());
    let mut outcome = outcomes.iter();
    for subject in subjects {
        tags.extend(
            outcome
                .by_ref()
                .take(subject.policy.windows.len())
                .map(|o| o.tag),
        );
        let others = subject.entries() - subject.policy.windows.len();
        outcome.by_ref().take(others).for_each(drop);
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::policy::{Algorithm, Policy, Window};
    use std::time::Duration;

    #[test]
    fn both_keys_of_a_subject_share_its_hash_tag() {
        let keys = SubjectKeys::new("c:alice");
        assert_eq!(keys.windows, "tg:{c:alice}:w");
        assert_eq!(keys.leases, "tg:{c:alice}:l");
        assert_eq!(keys.slot, fred::util::redis_keyslot(b"c:alice"));
    }

    #[test]
    fn braces_in_a_subject_key_cannot_change_the_hash_tag() {
        for key in ["}x", "a}b", "{", "%7D", ""] {
            let keys = SubjectKeys::new(key);
            assert_eq!(
                fred::util::redis_keyslot(keys.leases.as_bytes()),
                keys.slot,
                "{key:?}"
            );
            let inner = &keys.windows[4..keys.windows.len() - 3];
            assert!(!inner.contains(['{', '}']), "{key:?} → {}", keys.windows);
        }
        assert_ne!(
            SubjectKeys::new("%7D").windows,
            SubjectKeys::new("}").windows
        );
        assert_ne!(
            SubjectKeys::new("%00").windows,
            SubjectKeys::new("").windows
        );
    }

    #[test]
    fn a_batch_of_calls_follows_the_script_layout() {
        let gold = Policy::new(
            "gold",
            Algorithm::SlidingWindow,
            vec![
                Window::new(10, Duration::from_secs(1)),
                Window::new(500, Duration::from_secs(3600)),
            ],
        )
        .with_concurrency(4)
        .with_block_for(Duration::from_secs(600));
        let route = Policy::new(
            "route",
            Algorithm::TokenBucket,
            vec![Window::new(100, Duration::from_secs(60))],
        );
        let subjects = [Subject::new("c:a", &gold), Subject::new("r:x", &route)];
        let keys = [SubjectKeys::new("c:a"), SubjectKeys::new("r:x")];
        let call = Call {
            mode: Mode::Undo,
            cost: 2,
            lease_id: "req-1",
            lease_ttl_ms: 60_000,
        };
        let undo = ScriptCall::new(&call, &subjects, &[&keys[0], &keys[1]], &[7, 8, 9]);
        let acquire = ScriptCall::new(
            &Call {
                mode: Mode::Acquire,
                cost: 1,
                lease_id: "req-2",
                ..call
            },
            &subjects[1..],
            &[&keys[1]],
            &[],
        );
        let text = |args: &[Value]| -> Vec<String> {
            args.iter()
                .map(|v| v.as_str().map(|s| s.to_string()).unwrap_or_default())
                .collect()
        };
        assert_eq!(
            text(&batch_arguments(&[&undo, &acquire])),
            [
                "",
                "6",
                "tg:{c:a}:w",
                "tg:{c:a}:l",
                "tg:{r:x}:w",
                "tg:{r:x}:l",
                "tg:{r:x}:w",
                "tg:{r:x}:l",
                "2",
                "u",
                "2",
                "req-1",
                "60000",
                "2",
                "s",
                "gold",
                "4",
                "600000",
                "2",
                "10",
                "1000",
                "7",
                "500",
                "3600000",
                "8",
                "t",
                "route",
                "-1",
                "0",
                "1",
                "100",
                "60000",
                "9",
                "a",
                "1",
                "req-2",
                "60000",
                "1",
                "t",
                "route",
                "-1",
                "0",
                "1",
                "100",
                "60000",
                "0",
            ]
        );
        // Built once per policy: the second call copies the first's.
        let again = ScriptCall::new(
            &Call {
                mode: Mode::Peek,
                ..call
            },
            &subjects[1..],
            &[&keys[1]],
            &[],
        );
        assert_eq!(again.args[5..], acquire.args[5..]);
        assert!(route.script_args.0.get().is_some());
        assert!(route.clone().script_args.0.get().is_none());
    }

    #[test]
    fn a_batch_reply_has_one_reply_per_call() {
        let two = Value::Array(vec![Value::Integer(0), Value::Array(vec![])]);
        assert_eq!(split_batch_reply(two.clone(), 2).map(|r| r.len()), Ok(2));
        assert!(split_batch_reply(two, 3).is_err());
        assert!(split_batch_reply(Value::Integer(0), 1).is_err());
    }

    #[test]
    fn replies_are_read_entry_by_entry() {
        let reply = Value::Array(
            [0, 1_700_000_000_123, 1, 3, 500, 0, 1000, 0, 0, 800, 250, 0]
                .into_iter()
                .map(Value::Integer)
                .collect(),
        );
        let reply = parse_reply(reply, 2).expect("well-formed reply");
        assert!(!reply.all_allowed);
        assert_eq!(reply.now_ms, 1_700_000_000_123);
        assert_eq!(
            reply.outcomes[1],
            Outcome {
                allowed: false,
                remaining: 0,
                reset_ms: 800,
                retry_ms: 250,
                tag: 0
            }
        );
        assert!(parse_reply(Value::Array(vec![Value::Integer(1)]), 1).is_err());
        assert!(parse_reply(Value::Null, 0).is_err());
    }

    #[test]
    fn undo_tags_skip_concurrency_entries() {
        let capped = Policy::new(
            "p",
            Algorithm::FixedWindow,
            vec![Window::new(1, Duration::from_secs(1))],
        )
        .with_concurrency(1);
        let subjects = [Subject::new("a", &capped), Subject::new("b", &capped)];
        let outcome = |tag| Outcome {
            allowed: true,
            remaining: 0,
            reset_ms: 0,
            retry_ms: 0,
            tag,
        };
        let outcomes = [outcome(10), outcome(0), outcome(20), outcome(0)];
        assert_eq!(window_tags(&subjects, &outcomes), [10, 20]);
    }

    #[test]
    fn the_script_is_assembled_from_all_four_files() {
        for part in [
            "local fixed_window = {}",
            "local sliding_window = {}",
            "local token_bucket = {}",
            "local algorithms = {",
        ] {
            assert!(SOURCE.contains(part), "{part}");
        }
        assert_eq!(SHA1.len(), 40);
    }
}
