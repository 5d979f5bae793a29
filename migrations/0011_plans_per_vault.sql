-- Steadier and cheaper plans for the reads and writes of one vault.
--
-- Statements the relay runs often (its prepared reads, and every statement
-- inside a PL/pgSQL function) run on a cached generic plan, which Postgres
-- builds from the table's statistics and not from the vault asked for. It
-- estimates "vault_id = $1" as the table's rows over the number of
-- distinct vaults that ANALYZE counted. Gathered while one vault held nearly
-- every row (one busy vault, a large import), that count is one or a few,
-- so a vault looks like most of the table, and scanning the primary key on
-- seq while filtering on the vault looks cheapest. For any other vault that
-- plan reads the whole table: measured on a copy of such a database, 20 to
-- 40 ms for each write's max(seq) inside vault_write_batch and for each
-- read of a new vault, on CPU, until autovacuum analyzed again; and slow
-- batches made bigger batches.
--
-- 1. The planner is told instead that a vault holds a small share of the
--    rows (distinct vaults = 5% of the rows, about 20 rows each), which is
--    the shape a generic plan should assume: then the indexes that lead
--    with vault_id serve every such statement, for a small vault and a
--    large one alike. A plan made for a known vault (a custom plan) still
--    uses the most-common-value statistics, so a very large vault is still
--    planned as one. The override is kept by every later ANALYZE; the one
--    here applies it at once.
alter table vault_entries alter column vault_id set (n_distinct = -0.05);
analyze vault_entries (vault_id);

-- 2. vault_write_batch (0006) no longer reads out_prev_seq, the vault's
--    newest seq before the item's row, as max(seq) over the vault's rows:
--    the vault's head_seq column is that same seq, since every statement
--    that gives a vault's row a seq (vault_write, vault_rewrite and this
--    batch: 0002, 0004, 0006) sets head_seq to it under the vault's lock.
--    It is read with the rest of the vault's row, which the batch already
--    reads per item, so each write runs one statement fewer.
--
-- 3. The batch runs on generic plans only (plan_cache_mode is set on the
--    function). Its statements over the whole batch take the batch's
--    vaults as an array, and Postgres cannot price a generic plan for an
--    array of unknown length, so it kept planning those statements afresh
--    on every call: about 0.3 ms of database CPU per batch, most of the
--    cost of a lone write (perf on the backend: a quarter of its samples
--    in the planner). With 1 above, a generic plan is a good plan for any
--    vault.
--
-- 4. The mode rows are read (and locked FOR SHARE, in work session order)
--    first, and created only for work sessions that have none yet, which
--    are then read again. Before, every batch ran the INSERT ... ON
--    CONFLICT DO NOTHING, which finds the row there but still sets up an
--    insert and evaluates the table's checks. pgbench, one client,
--    synchronous_commit off, a one-write batch, 4 alternating rounds:
--    0.45 to 0.53 ms against 0.83 to 0.95 ms for 0006's body (and 0.33 to
--    0.36 ms for the per-write transaction of the write benchmark's raw
--    baseline).
--
-- Everything else is 0006's body, unchanged; its header comment still
-- describes the function.
create or replace function vault_write_batch(
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
set plan_cache_mode = force_generic_plan
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
    v_unmoded boolean;
    v_mode text;
    v_kid text;
    v_class text;
begin
    perform 1 from vaults v where v.id = any(p_vaults) order by v.id for update;
    -- Each work session's mode row, locked FOR SHARE once for the batch (in
    -- work session order) and read once: what encryption_refusal (0004)
    -- would lock and read for every item. A work session without a row
    -- yet gets one (in the same order), and the rows are read again.
    loop
        select coalesce(jsonb_object_agg(w.work_session, jsonb_build_array(m.mode, m.kid))
                        filter (where m.work_session is not null), '{}'::jsonb),
               coalesce(bool_or(m.work_session is null), false)
        into v_modes, v_unmoded
        from (select distinct v.work_session from vaults v where v.id = any(p_vaults)
              order by 1) w
        left join lateral (
            select m.work_session, m.mode, m.kid from encryption_modes m
            where m.work_session = w.work_session
            for share) m on true;
        exit when not v_unmoded;
        insert into encryption_modes (work_session)
        select distinct v.work_session from vaults v where v.id = any(p_vaults)
        order by 1
        on conflict do nothing;
    end loop;
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
        select v.work_session, v.next_entry_no, v.head_seq into v_vault_session, v_next, v_prev
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
comment on function vault_write_batch(text[], text[], bigint[], text[], text[], text[], text[], double precision[]) is 'Checks (session, write rule, idempotency key, encryption mode, entry) and writes a batch of content writes in one transaction with one NOTIFY; see 0006_vault_write_batch.sql and 0011.';
