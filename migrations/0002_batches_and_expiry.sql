-- tollgate schema, version 2: usage batches already applied; refresh tokens by expiry.
-- The usage flusher writes each batch of counts under a random id and records the id in the
-- same transaction. A batch whose write committed but whose answer never arrived (a dropped
-- connection, a flush cancelled at shutdown) is retried under the same id and skipped, so
-- no request is counted twice. Ids older than a day are deleted by the flusher.
create table usage_batches (
    id         text primary key check (length(id) between 1 and 64),
    applied_at timestamptz not null default now()
);
create index usage_batches_applied_at_idx on usage_batches (applied_at);

-- Logins delete refresh tokens that expired over a day ago, a few at a time.
create index refresh_tokens_expires_at_idx on refresh_tokens (expires_at);
