-- tollgate schema, version 1. Applied by src/db/migrate.rs inside one transaction.
-- Secrets are never stored: api_keys.hash is the HMAC-SHA-256 of the key under the
-- gateway's pepper, refresh_tokens.token_hash the SHA-256 of the token.

-- Identifiers for rows the database names itself: a prefix plus 32 hex digits.
create function tollgate_new_id(prefix text) returns text
    language sql volatile
    as $$ select prefix || replace(gen_random_uuid()::text, '-', '') $$;

create table plans (
    name        text primary key check (length(name) between 1 and 128),
    algorithm   text not null
                check (algorithm in ('fixed_window', 'sliding_window', 'token_bucket')),
    -- [{"requests": u64, "per_seconds": u64, "burst": u64 | null}, ...]
    limits      jsonb not null default '[]' check (jsonb_typeof(limits) = 'array'),
    concurrency integer check (concurrency is null or concurrency > 0),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

create table consumers (
    id         text primary key check (length(id) between 1 and 128),
    plan       text references plans (name) on update cascade on delete restrict,
    status     text not null default 'active' check (status in ('active', 'disabled')),
    scopes     text[] not null default '{}',
    metadata   jsonb not null default '{}' check (jsonb_typeof(metadata) = 'object'),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
-- The plan filter of the consumer listing, and the restrict check when a plan is deleted.
create index consumers_plan_idx on consumers (plan);

create table api_keys (
    id           text primary key default tollgate_new_id('key_'),
    consumer_id  text not null references consumers (id) on delete cascade,
    name         text not null default '',
    -- `tg_` plus the public part of the key, for display.
    prefix       text not null,
    -- The proxy's lookup: unique, so one hash resolves to at most one key.
    hash         bytea not null unique check (length(hash) = 32),
    -- null: the consumer's scopes apply.
    scopes       text[],
    status       text not null default 'active' check (status in ('active', 'disabled')),
    expires_at   timestamptz,
    created_at   timestamptz not null default now(),
    last_used_at timestamptz,
    rotated_from text references api_keys (id) on delete set null
);
-- Keys of one consumer (listing, and the cascade when a consumer is deleted).
create index api_keys_consumer_idx on api_keys (consumer_id);
create index api_keys_rotated_from_idx on api_keys (rotated_from) where rotated_from is not null;

create table users (
    id            text primary key default tollgate_new_id('usr_'),
    email         text not null unique check (email = lower(email) and position('@' in email) > 1),
    password_hash text not null,
    consumer_id   text references consumers (id),
    created_at    timestamptz not null default now()
);
-- The restrict check when a consumer is deleted.
create index users_consumer_idx on users (consumer_id);

create table refresh_tokens (
    id          text primary key default tollgate_new_id('rt_'),
    user_id     text not null references users (id) on delete cascade,
    -- Every token descending from one login shares the family of the first.
    family_id   text not null,
    token_hash  bytea not null unique check (length(token_hash) = 32),
    issued_at   timestamptz not null default now(),
    expires_at  timestamptz not null,
    revoked_at  timestamptz,
    replaced_by text references refresh_tokens (id) on delete set null
);
create index refresh_tokens_family_idx on refresh_tokens (family_id);
create index refresh_tokens_user_idx on refresh_tokens (user_id);
create index refresh_tokens_replaced_by_idx on refresh_tokens (replaced_by) where replaced_by is not null;

-- Request counts per UTC day, written in batches by the gateway's usage flusher. No
-- foreign keys: usage is history and outlives deleted consumers and keys.
create table usage (
    day         date not null,
    consumer_id text not null,
    -- '' when the request used no API key (a JWT).
    key_id      text not null default '',
    route       text not null,
    allowed     bigint not null default 0 check (allowed >= 0),
    limited     bigint not null default 0 check (limited >= 0),
    primary key (day, consumer_id, key_id, route)
);
create index usage_consumer_day_idx on usage (consumer_id, day);
create index usage_key_day_idx on usage (key_id, day);

create table audit_log (
    id          bigserial primary key,
    at          timestamptz not null default now(),
    actor       text not null,
    action      text not null,
    target_type text not null,
    target_id   text not null,
    details     jsonb not null default '{}'
);
create index audit_log_target_idx on audit_log (target_type, target_id, id);
