-- Content writes on behalf of sessions, many per transaction, in one
-- statement: vault_write_batch() takes the writes of a batch as parallel
-- arrays (item i is p_sessions[i], p_vaults[i], ...) and returns one row per
-- item, in order, each with its own result.
--
-- Per item it checks what the relay would otherwise ask in separate round
-- trips, in the order the relay reports them:
--   1. the session (by the hash of its id) is granted           else 'session'
--   2. the vault exists                                          else 'vault'
--   3. the session's astation is the vault's work session        else 'forbidden'
--      (the write rule of src/access.rs, which is its documented source)
--   4. with a key (p_keys[i] not null), the idempotency key is claimed
--      for the work session and the writer; a live key answers  'prior'
--      with the first request's fingerprint and response, and nothing is
--      written (a repeat gets its first response whatever the mode is now)
--   5. the work session's encryption mode accepts the content, by the
--      rules of encryption_refusal (0004_encryption.sql)         else 'mode <mode> <kid>'
--   6. an edit (p_entries[i] not null) names an existing entry   else 'entry'
-- and then appends or edits as vault_write() (0002) does, and records a
-- keyed write's response. A refused item writes nothing and the others go
-- on: no exception is raised, so one bad write never rolls back its
-- neighbours; a refusal after a claim (mode, entry) gives the claim back,
-- so that only successful writes keep a key.
--
-- Locks: every vault of the batch is locked first, in id order, so that two
-- batches that share vaults (on any replicas) wait for each other instead of
-- deadlocking. The encryption mode rows of the batch's work sessions are
-- created (when missing) next and locked FOR SHARE, in work session order,
-- for the same reason, and read once for the whole batch; held until the
-- batch commits, so a change of mode waits for the batch and counts what
-- it wrote. Every later statement takes a fresh snapshot (READ
-- COMMITTED), so it sees every write committed before the locks were
-- granted; entry numbers, versions and seqs are allocated under the locks,
-- so within a vault seq order equals commit order.
--
-- out_prev_seq is the vault's newest seq just before the item's row (read
-- under the lock): a relay that has delivered exactly up to it may deliver
-- the new row to its own subscribers at once, without a re-read.
--
-- One NOTIFY per batch, delivered at commit and never for a rolled-back
-- batch: {"t": "entries", "h": {<vault id>: <its highest new seq>, ...}}.

-- The claim of an idempotency key, written once here and used both by the
-- keyed single writes (src/store/postgres/idempotency.rs) and by the batch.
-- It inserts the key with no response yet; a live key (one committed by an
-- earlier request) is returned instead and nothing is claimed; an expired
-- key is taken over. A concurrent claim of the same key waits on the
-- primary key until the first transaction ends, then sees its record.
create function idempotency_claim(
    p_work_session text,
    p_client_id text,
    p_key text,
    p_fingerprint text,
    p_ttl_secs double precision,
    out o_prior_fingerprint text,
    out o_prior_response text
)
language plpgsql
as $$
begin
    insert into idempotency_keys (work_session, client_id, key, fingerprint, expires_at)
    values (p_work_session, p_client_id, p_key, p_fingerprint, now() + make_interval(secs => p_ttl_secs))
    on conflict (work_session, client_id, key) do update set
        fingerprint = excluded.fingerprint,
        response = null,
        created_at = now(),
        expires_at = excluded.expires_at
    where idempotency_keys.expires_at <= now();
    if found then
        return;
    end if;
    -- A live key. This statement's snapshot is newer than the conflict, so
    -- it sees the committed record with its response (claim and record
    -- commit together).
    select k.fingerprint, coalesce(k.response, '') into o_prior_fingerprint, o_prior_response
    from idempotency_keys k
    where k.work_session = p_work_session and k.client_id = p_client_id and k.key = p_key;
end;
$$;
comment on function idempotency_claim(text, text, text, text, double precision) is 'Claims an idempotency key for this transaction, or returns the live prior record (fingerprint, response); see 0006.';

-- The batch (see the top of this file).
create function vault_write_batch(
    p_sessions text[],
    p_vaults text[],
    p_entries bigint[],
    p_writers text[],
    p_contents text[],
    p_keys text[],
    p_fingerprints text[],
    p_key_ttls double precision[]
)
returns table (
    out_error text,
    out_entry_no bigint,
    out_version bigint,
    out_seq bigint,
    out_prev_seq bigint,
    out_created_at timestamptz,
    out_prior_fingerprint text,
    out_prior_response text
)
language plpgsql
as $$
declare
    v_n integer := coalesce(array_length(p_vaults, 1), 0);
    v_work_session text;
    v_vault_session text;
    v_next bigint;
    v_entry bigint;
    v_version bigint;
    v_prev bigint;
    v_seq bigint;
    v_claimed boolean;
    v_heads jsonb := '{}'::jsonb;
    v_modes jsonb;
    v_mode text;
    v_kid text;
    v_class text;
begin
    perform 1 from vaults v where v.id = any(p_vaults) order by v.id for update;
    insert into encryption_modes (work_session)
    select distinct v.work_session from vaults v where v.id = any(p_vaults)
    order by 1
    on conflict do nothing;
    -- Each work session's mode row, locked FOR SHARE once for the batch (in
    -- work session order) and read once: what encryption_refusal (0004)
    -- would lock and read for every item.
    select coalesce(jsonb_object_agg(m.work_session, jsonb_build_array(m.mode, m.kid)), '{}'::jsonb)
    into v_modes
    from (select m.work_session, m.mode, m.kid from encryption_modes m
          where m.work_session in (select v.work_session from vaults v where v.id = any(p_vaults))
          order by m.work_session
          for share) m;
    for i in 1 .. v_n loop
        out_error := null;
        out_entry_no := null;
        out_version := null;
        out_seq := null;
        out_prev_seq := null;
        out_created_at := null;
        out_prior_fingerprint := null;
        out_prior_response := null;
        v_claimed := false;

        select s.astation_id into v_work_session
        from sessions s where s.id_hash = p_sessions[i] and s.state = 'granted';
        if not found then
            out_error := 'session';
            return next;
            continue;
        end if;
        select v.work_session, v.next_entry_no into v_vault_session, v_next
        from vaults v where v.id = p_vaults[i];
        if not found then
            out_error := 'vault';
            return next;
            continue;
        end if;
        if v_work_session is distinct from v_vault_session then
            out_error := 'forbidden';
            return next;
            continue;
        end if;
        if p_keys[i] is not null then
            select c.o_prior_fingerprint, c.o_prior_response
            into out_prior_fingerprint, out_prior_response
            from idempotency_claim(v_work_session, p_writers[i], p_keys[i], p_fingerprints[i], p_key_ttls[i]) c;
            if out_prior_fingerprint is not null then
                out_error := 'prior';
                return next;
                continue;
            end if;
            v_claimed := true;
        end if;
        -- encryption_refusal's rules (0004), on the mode read above; a
        -- plain text is told apart without calling encryption_field_class.
        if p_contents[i] = '' then
            out_error := null;
        else
            v_mode := v_modes -> v_vault_session ->> 0;
            v_kid := v_modes -> v_vault_session ->> 1;
            if left(p_contents[i], 3) <> 'e1.' then
                v_class := 'plaintext';
            else
                v_class := encryption_field_class(p_contents[i], v_kid);
            end if;
            if (v_mode = 'off' and v_class = 'plaintext')
               or (v_mode in ('enabling', 'on') and v_class = 'ciphertext')
               or (v_mode = 'disabling' and v_class in ('plaintext', 'ciphertext')) then
                out_error := null;
            else
                out_error := 'mode ' || v_mode || ' ' || coalesce(v_kid, '');
            end if;
        end if;
        if out_error is null and p_entries[i] is not null then
            select max(e.version) into v_version
            from vault_entries e
            where e.vault_id = p_vaults[i] and e.entry_no = p_entries[i];
            if v_version is null then
                out_error := 'entry';
            end if;
        end if;
        if out_error is not null then
            if v_claimed then
                delete from idempotency_keys k
                where k.work_session = v_work_session and k.client_id = p_writers[i]
                  and k.key = p_keys[i];
            end if;
            return next;
            continue;
        end if;
        if p_entries[i] is null then
            v_entry := v_next;
            v_version := 1;
        else
            v_entry := p_entries[i];
            v_version := v_version + 1;
        end if;
        select coalesce(max(e.seq), 0) into v_prev
        from vault_entries e where e.vault_id = p_vaults[i];
        v_seq := nextval('vault_seq');
        insert into vault_entries (seq, vault_id, entry_no, version, kind, writer_id, content)
        values (v_seq, p_vaults[i], v_entry, v_version, 'content', p_writers[i], p_contents[i]);
        update vaults v set
            head_seq = v_seq,
            next_entry_no = case when p_entries[i] is null then v.next_entry_no + 1 else v.next_entry_no end,
            writers = case when v.writers @> array[p_writers[i]] then v.writers
                           else array_append(v.writers, p_writers[i]) end
        where v.id = p_vaults[i];
        if v_claimed then
            -- Exactly the text of src/store/mod.rs::receipt_response.
            update idempotency_keys k
            set response = '{"entry_no":' || v_entry || ',"version":' || v_version || ',"seq":' || v_seq || '}'
            where k.work_session = v_work_session and k.client_id = p_writers[i] and k.key = p_keys[i];
        end if;
        v_heads := v_heads || jsonb_build_object(p_vaults[i], v_seq);
        out_entry_no := v_entry;
        out_version := v_version;
        out_seq := v_seq;
        out_prev_seq := v_prev;
        out_created_at := now();
        return next;
    end loop;
    if v_heads <> '{}'::jsonb then
        perform pg_notify('vault_relay', json_build_object('t', 'entries', 'h', v_heads)::text);
    end if;
end;
$$;
comment on function vault_write_batch(text[], text[], bigint[], text[], text[], text[], text[], double precision[]) is 'Checks (session, write rule, idempotency key, encryption mode, entry) and writes a batch of content writes in one transaction with one NOTIFY; see 0006_vault_write_batch.sql.';
