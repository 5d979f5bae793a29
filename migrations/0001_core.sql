-- The relay's core tables: vaults and their append-only log, astations,
-- sessions, stream tickets and read-only links.

create table relay_meta (
    singleton boolean primary key default true check (singleton),
    epoch uuid not null default gen_random_uuid(),
    created_at timestamptz not null default now()
);
comment on table relay_meta is 'One row: the store epoch, an id of this database''s lifetime that resume cursors belong to.';
insert into relay_meta default values;

-- seq: one global write counter over all rows of all vaults. Allocated with
-- nextval() while holding the vault's row lock, in the inserting transaction.
create sequence vault_seq as bigint;

create table vaults (
    id text primary key,
    summary text not null,
    work_session text not null,
    creator text not null,
    created_at timestamptz not null default now(),
    writers text[] not null default '{}',
    next_entry_no bigint not null default 1,
    head_seq bigint not null default 0
);
comment on table vaults is 'Vault headers: mutable summary, owning work session (astation id), writer list, next entry number and newest seq.';
create index vaults_work_session_idx on vaults (work_session, created_at);
create index vaults_writers_idx on vaults using gin (writers);

create table vault_entries (
    seq bigint primary key,
    vault_id text not null references vaults (id),
    entry_no bigint not null check (entry_no >= 1),
    version bigint not null check (version >= 1),
    kind text not null check (kind in ('content', 'summary')),
    writer_id text not null,
    content text not null,
    created_at timestamptz not null default now(),
    unique (vault_id, entry_no, version)
);
comment on table vault_entries is 'The append-only log: every write is a new row; never updated or deleted.';
create index vault_entries_vault_seq_idx on vault_entries (vault_id, seq);

create table astations (
    id text primary key,
    name text not null,
    token_hash text not null unique,
    created_at timestamptz not null default now()
);
comment on table astations is 'Registered astations; tokens are kept only as SHA-256 hashes.';

create table sessions (
    id_hash text primary key,
    hostname text not null,
    state text not null check (state in ('pending', 'granted', 'denied', 'revoked')),
    astation_id text,
    otp_hash text,
    failed_attempts integer not null default 0,
    expires_at timestamptz not null,
    created_at timestamptz not null default now()
);
comment on table sessions is 'Sessions keyed by the hash of their id; astation_id is the work session once granted.';
create index sessions_astation_idx on sessions (astation_id);

create table stream_tickets (
    ticket_hash text primary key,
    vault_id text not null references vaults (id),
    session_hash text,
    link_hash text,
    client_id text not null,
    expires_at timestamptz not null
);
comment on table stream_tickets is 'Short-lived, single-use credentials that let a browser open a stream without a secret in the URL.';

create table read_links (
    link_id text primary key,
    secret_hash text not null unique,
    vault_id text not null references vaults (id),
    created_by text not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    revoked boolean not null default false
);
comment on table read_links is 'Read-only links to one vault; the secret is kept only as a hash.';
create index read_links_vault_idx on read_links (vault_id, created_at);

create table relay_replicas (
    replica_id text primary key,
    heartbeat_at timestamptz not null default now()
);
comment on table relay_replicas is 'Running relay processes and when each last said it was alive; presence ignores silent ones.';

create table stream_watchers (
    replica_id text not null,
    conn_id bigint not null,
    vault_id text not null,
    atem_id text not null,
    client_id text not null,
    joined_at timestamptz not null default clock_timestamp(),
    primary key (replica_id, conn_id)
);
comment on table stream_watchers is 'Open streams of every replica, for presence across replicas.';
create index stream_watchers_vault_idx on stream_watchers (vault_id, joined_at);
