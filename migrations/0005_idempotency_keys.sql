-- Idempotency keys for create and content writes (Idempotency-Key header).
--
-- A keyed write runs, in ONE transaction (src/store/postgres/idempotency.rs):
--   1. claim:  insert the key with response null (on conflict with a live
--              key: nothing, and the write is not done; an expired key is
--              taken over);
--   2. write:  vault_write() or the vault insert, as without a key;
--   3. record: set the response the write produced.
-- The claim's unique index makes a concurrent repeat wait for the first
-- transaction; when it commits, the repeat finds the key and replays its
-- response instead of writing. A write that fails rolls back its claim too,
-- so only successful responses are ever stored.
create table idempotency_keys (
    work_session text not null,
    client_id text not null,
    key text not null,
    fingerprint text not null,
    response text,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    primary key (work_session, client_id, key)
);
comment on table idempotency_keys is 'Idempotency-Key records: per work session and client id, the request fingerprint and the first successful response, kept until expires_at (swept).';
create index idempotency_keys_expires_idx on idempotency_keys (expires_at);
