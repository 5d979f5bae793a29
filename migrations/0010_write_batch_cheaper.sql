-- The content write's hot path, cheaper for Postgres to run (same results
-- as 0008, which the store suite and the encryption tests check):
--
-- - vault_write_batch locks and reads each work session's mode row once per
--   batch instead of once per item, and tells plain text apart inline, the
--   way encryption_refusal (0004) does, without calling it;
-- - the shape functions get SQL-standard bodies (RETURN), which Postgres
--   stores parsed: every insert computes vault_entries.content_shape and
--   would otherwise parse their source again.

create or replace function encryption_payload_ok(p text) returns boolean
language sql immutable parallel safe
return length(p) >= 56
   and p ~ '^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=|[A-Za-z0-9+/][AQgw]==)?$'
   and length(p) / 4 * 3 - (length(p) - length(rtrim(p, '='))) >= 40;

create or replace function encryption_shape(p_value text) returns text
language sql immutable parallel safe
return case
    when p_value = '' then 'empty'
    when left(p_value, 3) <> 'e1.' then 'plain'
    when substr(p_value, 4, 8) ~ '^[0-9a-f]{8}$'
         and substr(p_value, 12, 1) = '.'
         and encryption_payload_ok(substr(p_value, 13)) then substr(p_value, 4, 8)
    else 'malformed'
end;

create or replace function encryption_shape_class(p_shape text, p_kid text) returns text
language sql immutable parallel safe
return case
    when p_shape = 'empty' then 'empty'
    when p_shape = 'plain' then 'plaintext'
    when p_shape = p_kid then 'ciphertext'
    else 'obsolete'
end;

create or replace function encryption_field_class(p_value text, p_kid text) returns text
language sql immutable parallel safe
return encryption_shape_class(encryption_shape(p_value), p_kid);

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
