-- End-to-end encryption: an encryption mode per work session, the rules
-- that classify stored values, the mode check that every write makes inside
-- its own statement, and the rewrite of a vault's rows.
--
-- How a change of mode and racing writes stay apart: every write that
-- stores a non-empty value takes the work session's mode row FOR SHARE
-- (encryption_check) and keeps it until it commits; a change of mode takes
-- the same row FOR UPDATE (src/store/postgres/encryption.rs), so it waits
-- for those writes, then counts with a fresh snapshot that includes them.
-- A write that starts after the change waits for it and then checks the
-- new mode. So `on` is never reached with plaintext stored, and `off` never
-- with ciphertext.

create table encryption_modes (
    work_session text primary key,
    mode text not null default 'off' check (mode in ('off', 'enabling', 'on', 'disabling')),
    kid text check (kid ~ '^[0-9a-f]{8}$'),
    updated_at timestamptz,
    check ((mode = 'off') = (kid is null))
);
comment on table encryption_modes is 'Encryption mode and current key id per work session (astation id); no row, or a row never changed (updated_at null), means off.';

-- Strict standard base64 with padding (canonical trailing bits), decoding
-- to at least 40 bytes (nonce and tag). Mirrors
-- src/encryption/envelope.rs, which uses the base64 crate's STANDARD engine.
create function encryption_payload_ok(p text) returns boolean
language sql immutable parallel safe
return length(p) >= 56
   and p ~ '^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=|[A-Za-z0-9+/][AQgw]==)?$'
   and length(p) / 4 * 3 - (length(p) - length(rtrim(p, '='))) >= 40;
comment on function encryption_payload_ok(text) is 'Whether an envelope payload is strict padded base64 of at least 40 bytes (src/encryption/envelope.rs).';

-- The shape of a value: 'empty', 'plain' (not starting with e1.),
-- 'malformed' (starting with e1. but no envelope), or the kid of a
-- well-formed envelope. Mirrors src/encryption/envelope.rs::shape.
create function encryption_shape(p_value text) returns text
language sql immutable parallel safe
return case
    when p_value = '' then 'empty'
    when left(p_value, 3) <> 'e1.' then 'plain'
    when substr(p_value, 4, 8) ~ '^[0-9a-f]{8}$'
         and substr(p_value, 12, 1) = '.'
         and encryption_payload_ok(substr(p_value, 13)) then substr(p_value, 4, 8)
    else 'malformed'
end;
comment on function encryption_shape(text) is 'empty | plain | malformed | the kid of a well-formed envelope (src/encryption/envelope.rs::shape).';

-- How a value of shape p_shape counts against the current kid (null in
-- mode off): 'empty', 'plaintext', 'ciphertext' (a well-formed envelope
-- with that kid) or 'obsolete' (anything else starting with e1.). Mirrors
-- src/encryption/envelope.rs::classify.
create function encryption_shape_class(p_shape text, p_kid text) returns text
language sql immutable parallel safe
return case
    when p_shape = 'empty' then 'empty'
    when p_shape = 'plain' then 'plaintext'
    when p_shape = p_kid then 'ciphertext'
    else 'obsolete'
end;
comment on function encryption_shape_class(text, text) is 'empty | plaintext | ciphertext | obsolete of a shape, against the current kid.';

create function encryption_field_class(p_value text, p_kid text) returns text
language sql immutable parallel safe
return encryption_shape_class(encryption_shape(p_value), p_kid);
comment on function encryption_field_class(text, text) is 'empty | plaintext | ciphertext | obsolete of a value, against the current kid (src/encryption/envelope.rs::classify).';

-- Every stored value keeps its shape beside it, computed once when it is
-- written (or rewritten), so the gates count without parsing anything.
alter table vaults add column summary_shape text
    generated always as (encryption_shape(summary)) stored;
alter table vault_entries add column content_shape text
    generated always as (encryption_shape(content)) stored;
comment on column vaults.summary_shape is 'encryption_shape(summary): what the encryption gates count.';
comment on column vault_entries.content_shape is 'encryption_shape(content): what the encryption gates count.';

-- The work session's mode row, locked FOR SHARE until the caller's
-- transaction ends; created (mode off) when missing, so that a write in a
-- work session whose mode was never set also holds a lock that a change of
-- mode must wait for.
create function encryption_mode_shared(p_work_session text, out o_mode text, out o_kid text)
language plpgsql
as $$
begin
    select m.mode, m.kid into o_mode, o_kid
    from encryption_modes m where m.work_session = p_work_session for share;
    if not found then
        insert into encryption_modes (work_session) values (p_work_session)
        on conflict do nothing;
        select m.mode, m.kid into o_mode, o_kid
        from encryption_modes m where m.work_session = p_work_session for share;
    end if;
end;
$$;
comment on function encryption_mode_shared(text) is 'The work session''s encryption mode and kid, its row locked FOR SHARE (created as off when missing).';

-- THE MODE CHECK OF EVERY WRITE (new vault's summary, append, edit, summary
-- change), without raising: null when the work session's mode accepts
-- p_value, else the refusing mode and its kid as '<mode> <kid>' (kid empty
-- in mode off). Rules (src/encryption/mode.rs::accepts_write): empty
-- always; off: plaintext; enabling, on: ciphertext; disabling: plaintext
-- or ciphertext. Empty values take no lock: they are never counted. Call it
-- inside the write's transaction, after locking the vault row; the mode
-- row stays locked FOR SHARE until that transaction ends. The batched
-- write path (vault_write_batch, 0006) applies the same rules to each item
-- after locking its mode rows once per batch.
create function encryption_refusal(p_work_session text, p_value text) returns text
language plpgsql
as $$
declare
    v_mode text;
    v_kid text;
    v_class text;
begin
    if p_value = '' then
        return null;
    end if;
    select o_mode, o_kid into v_mode, v_kid from encryption_mode_shared(p_work_session);
    v_class := encryption_field_class(p_value, v_kid);
    if (v_mode = 'off' and v_class = 'plaintext')
       or (v_mode in ('enabling', 'on') and v_class = 'ciphertext')
       or (v_mode = 'disabling' and v_class in ('plaintext', 'ciphertext')) then
        return null;
    end if;
    return v_mode || ' ' || coalesce(v_kid, '');
end;
$$;
comment on function encryption_refusal(text, text) is 'The mode check of every write: null, or the refusing ''<mode> <kid>''. See 0004_encryption.sql.';

-- encryption_refusal that raises: true, or SQLSTATE VR003 with the
-- refusing mode as the message and its kid (or '') as the detail;
-- src/store/postgres turns that into StoreError::ModeMismatch.
create function encryption_check(p_work_session text, p_value text) returns boolean
language plpgsql
as $$
declare
    v_refusal text := encryption_refusal(p_work_session, p_value);
begin
    if v_refusal is null then
        return true;
    end if;
    raise exception '%', split_part(v_refusal, ' ', 1)
        using errcode = 'VR003', detail = split_part(v_refusal, ' ', 2);
end;
$$;
comment on function encryption_check(text, text) is 'The mode check of every write: true, or SQLSTATE VR003 (message: mode, detail: kid). See 0004_encryption.sql.';

-- vault_write (0002) with the mode check, after the vault lock.
create or replace function vault_write(p_vault text, p_entry bigint, p_writer text, p_content text)
returns table (out_entry_no bigint, out_version bigint, out_seq bigint)
language plpgsql
as $$
declare
    v_next bigint;
    v_work_session text;
    v_entry bigint;
    v_version bigint;
    v_seq bigint;
begin
    select v.next_entry_no, v.work_session into v_next, v_work_session
    from vaults v where v.id = p_vault for update;
    if not found then
        raise exception 'no such vault' using errcode = 'VR001';
    end if;
    perform encryption_check(v_work_session, p_content);
    if p_entry is null then
        v_entry := v_next;
        v_version := 1;
    else
        select max(e.version) into v_version
        from vault_entries e
        where e.vault_id = p_vault and e.entry_no = p_entry;
        if v_version is null then
            raise exception 'no such entry' using errcode = 'VR002';
        end if;
        v_entry := p_entry;
        v_version := v_version + 1;
    end if;
    v_seq := nextval('vault_seq');
    insert into vault_entries (seq, vault_id, entry_no, version, kind, writer_id, content)
    values (v_seq, p_vault, v_entry, v_version, 'content', p_writer, p_content);
    update vaults v set
        head_seq = v_seq,
        next_entry_no = case when p_entry is null then v.next_entry_no + 1 else v.next_entry_no end,
        writers = case when v.writers @> array[p_writer] then v.writers else array_append(v.writers, p_writer) end
    where v.id = p_vault;
    perform pg_notify('vault_relay', json_build_object('t', 'entry', 'v', p_vault, 's', v_seq)::text);
    return query select v_entry, v_version, v_seq;
end;
$$;
comment on function vault_write(text, bigint, text, text) is 'Appends (p_entry null) or edits an entry in one locked, mode-checked, notifying transaction; see 0002_vault_write.sql and 0004_encryption.sql.';

-- A summary change with the mode check, in one statement.
create function vault_set_summary(p_vault text, p_summary text) returns void
language plpgsql
as $$
declare
    v_work_session text;
begin
    select v.work_session into v_work_session from vaults v where v.id = p_vault for update;
    if not found then
        raise exception 'no such vault' using errcode = 'VR001';
    end if;
    perform encryption_check(v_work_session, p_summary);
    update vaults set summary = p_summary where id = p_vault;
    perform pg_notify('vault_relay', json_build_object('t', 'summary', 'v', p_vault)::text);
end;
$$;
comment on function vault_set_summary(text, text) is 'Sets a vault''s summary after the mode check, and announces it.';

-- The rewrite route: in one statement, under the vault's lock, checks the
-- mode (VR003 unless enabling or disabling, or when a value does not fit:
-- while enabling empty or ciphertext, while disabling empty or plaintext)
-- and that every listed row exists (VR004, message 'entry_no version' of the
-- first missing one), then gives each listed row its new content and a
-- fresh seq, in the order listed (entry_no, version, kind, writer and
-- created_at stay), sets the summary, and announces both. Returns the
-- number of rows rewritten.
create function vault_rewrite(p_vault text, p_summary text, p_entry_nos bigint[], p_versions bigint[], p_contents text[])
returns bigint
language plpgsql
as $$
declare
    v_work_session text;
    v_mode text;
    v_kid text;
    v_wanted text;
    v_n integer := coalesce(array_length(p_entry_nos, 1), 0);
    v_seq bigint;
    v_missing record;
begin
    select v.work_session into v_work_session from vaults v where v.id = p_vault for update;
    if not found then
        raise exception 'no such vault' using errcode = 'VR001';
    end if;
    select o_mode, o_kid into v_mode, v_kid from encryption_mode_shared(v_work_session);
    v_wanted := case v_mode when 'enabling' then 'ciphertext' when 'disabling' then 'plaintext' end;
    if v_wanted is null
       or encryption_field_class(p_summary, v_kid) not in ('empty', v_wanted)
       or exists (
           select 1 from unnest(p_contents) c
           where encryption_field_class(c, v_kid) not in ('empty', v_wanted)) then
        raise exception '%', v_mode using errcode = 'VR003', detail = coalesce(v_kid, '');
    end if;
    select t.n, t.v into v_missing
    from unnest(p_entry_nos, p_versions) with ordinality as t(n, v, ord)
    where not exists (
        select 1 from vault_entries e
        where e.vault_id = p_vault and e.entry_no = t.n and e.version = t.v)
    order by t.ord
    limit 1;
    if found then
        raise exception '% %', v_missing.n, v_missing.v using errcode = 'VR004';
    end if;
    for i in 1..v_n loop
        v_seq := nextval('vault_seq');
        update vault_entries e set seq = v_seq, content = p_contents[i]
        where e.vault_id = p_vault and e.entry_no = p_entry_nos[i] and e.version = p_versions[i];
    end loop;
    update vaults v set
        summary = p_summary,
        head_seq = case when v_n > 0 then v_seq else v.head_seq end
    where v.id = p_vault;
    if v_n > 0 then
        perform pg_notify('vault_relay', json_build_object('t', 'entry', 'v', p_vault, 's', v_seq)::text);
    end if;
    perform pg_notify('vault_relay', json_build_object('t', 'summary', 'v', p_vault)::text);
    return v_n;
end;
$$;
comment on function vault_rewrite(text, text, bigint[], bigint[], text[]) is 'The rewrite route in one locked, mode-checked, notifying statement; see 0004_encryption.sql.';

comment on table vault_entries is 'The append-only log: every write is a new row; only the rewrite route (vault_rewrite) replaces a row''s content, giving it a fresh seq.';
