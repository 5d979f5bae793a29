-- One round trip per write: vault_write() does what an append or edit
-- transaction does, as a single statement (so a single transaction).
--
-- It locks the vault row first; every later statement in the function takes
-- a fresh snapshot (READ COMMITTED), so it sees every write committed before
-- the lock was granted. The entry number, version and seq are allocated
-- while the lock is held, so within a vault seq order equals commit order.
-- The NOTIFY is delivered at commit, never for a rolled-back write.
--
-- Errors: SQLSTATE VR001 = no such vault, VR002 = no such entry.
create function vault_write(p_vault text, p_entry bigint, p_writer text, p_content text)
returns table (out_entry_no bigint, out_version bigint, out_seq bigint)
language plpgsql
as $$
declare
    v_next bigint;
    v_entry bigint;
    v_version bigint;
    v_seq bigint;
begin
    select v.next_entry_no into v_next from vaults v where v.id = p_vault for update;
    if not found then
        raise exception 'no such vault' using errcode = 'VR001';
    end if;
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
comment on function vault_write(text, bigint, text, text) is 'Appends (p_entry null) or edits an entry in one locked, notifying transaction; see 0002_vault_write.sql.';
