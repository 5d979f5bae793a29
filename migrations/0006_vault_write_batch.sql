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
--   4. the work session's encryption mode accepts the content
--      (encryption_refusal, 0004_encryption.sql)                else 'mode <mode> <kid>'
--   5. an edit (p_entries[i] not null) names an existing entry   else 'entry'
-- and then appends or edits as vault_write() (0002) does. A refused item
-- writes nothing and the others go on: no exception is raised, so one bad
-- write never rolls back its neighbours.
--
-- Locks: every vault of the batch is locked first, in id order, so that two
-- batches that share vaults (on any replicas) wait for each other instead of
-- deadlocking. The encryption mode rows of the batch's work sessions are
-- created (when missing) next, in work session order, for the same reason;
-- each item's mode check then holds its work session's mode row FOR SHARE
-- until the batch commits, so a change of mode waits for the batch and
-- counts what it wrote. Every later statement takes a fresh snapshot (READ
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
create function vault_write_batch(
    p_sessions text[],
    p_vaults text[],
    p_entries bigint[],
    p_writers text[],
    p_contents text[]
)
returns table (
    out_error text,
    out_entry_no bigint,
    out_version bigint,
    out_seq bigint,
    out_prev_seq bigint,
    out_created_at timestamptz
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
    v_heads jsonb := '{}'::jsonb;
begin
    perform 1 from vaults v where v.id = any(p_vaults) order by v.id for update;
    insert into encryption_modes (work_session)
    select distinct v.work_session from vaults v where v.id = any(p_vaults)
    order by 1
    on conflict do nothing;
    for i in 1 .. v_n loop
        out_error := null;
        out_entry_no := null;
        out_version := null;
        out_seq := null;
        out_prev_seq := null;
        out_created_at := null;

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
        out_error := encryption_refusal(v_vault_session, p_contents[i]);
        if out_error is not null then
            out_error := 'mode ' || out_error;
            return next;
            continue;
        end if;
        if p_entries[i] is null then
            v_entry := v_next;
            v_version := 1;
        else
            select max(e.version) into v_version
            from vault_entries e
            where e.vault_id = p_vaults[i] and e.entry_no = p_entries[i];
            if v_version is null then
                out_error := 'entry';
                return next;
                continue;
            end if;
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
comment on function vault_write_batch(text[], text[], bigint[], text[], text[]) is 'Checks and writes a batch of content writes in one transaction with one NOTIFY; see 0006_vault_write_batch.sql.';
