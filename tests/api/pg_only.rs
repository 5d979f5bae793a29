//! What only Postgres can show: concurrency under real transactions,
//! durability across restarts, the LISTEN connection dying, rolled-back
//! writes, several replicas on one database, health when the database goes
//! away, and the `astation` subcommands.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, Backend, TestApp, TestDb};

fn seq(v: &Value) -> i64 {
    v["seq"].as_i64().expect("seq")
}

/// Checks a vault's history (every row, in the order read): seqs strictly
/// increase, no (entry, version) twice, entry numbers e1..eN without gaps,
/// and in seq order the versions of each entry count 1, 2, 3, ... Returns
/// the number of entries.
pub(crate) fn assert_log_is_consistent(history: &[Value]) -> usize {
    let seqs: Vec<i64> = history.iter().map(seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq strictly increases"
    );
    let mut versions: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut pairs = HashSet::new();
    for row in history {
        let (n, ver) = (
            row["entry_no"].as_i64().unwrap(),
            row["version"].as_i64().unwrap(),
        );
        assert!(pairs.insert((n, ver)), "duplicate (e{n}, v{ver})");
        versions.entry(n).or_default().push(ver);
    }
    let numbers: Vec<i64> = versions.keys().copied().collect();
    assert_eq!(
        numbers,
        (1..=numbers.len() as i64).collect::<Vec<_>>(),
        "entry numbers are contiguous"
    );
    for (n, vs) in &versions {
        assert_eq!(
            *vs,
            (1..=vs.len() as i64).collect::<Vec<_>>(),
            "versions of e{n}"
        );
    }
    numbers.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_and_edits_keep_numbers_contiguous_and_seq_ordered() {
    let app = Arc::new(TestApp::spawn(Backend::Postgres).await);
    let (_, _, s) = app.work_session("home").await;
    let mut vaults = Vec::new();
    for i in 0..3 {
        let v = app.create_vault(&s, "c", &format!("v{i}")).await;
        app.write(&v, &s, "c", "seed", None).await;
        vaults.push(v);
    }
    let tasks: Vec<_> = (0..24)
        .map(|t| {
            let (app, s, v) = (app.clone(), s.clone(), vaults[t % 3].clone());
            tokio::spawn(async move {
                for i in 0..15 {
                    // Edits target e1 (always there) or the writer's own
                    // latest append, so they always name a real entry.
                    let edit = match i % 4 {
                        1 => Some(1),
                        _ => None,
                    };
                    app.write(&v, &s, &format!("t{t}"), &format!("t{t} i{i}"), edit)
                        .await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for v in &vaults {
        let history = app.read(v, &s, "c", "history=true").await;
        assert_eq!(history.len(), 1 + 8 * 15, "every write is a row");
        let appends = 1 + 8 * 15 - 8 * 4; // seed + appends; 4 edits per task
        assert_eq!(assert_log_is_consistent(&history), appends);
        let current = app.read(v, &s, "c", "").await;
        assert_eq!(current.len(), appends);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_vaults_and_astations_survive_a_restart() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let (astation_id, token, s) = app.work_session("desk").await;
    let v = app.create_vault(&s, "c", "durable").await;
    app.write(&v, &s, "c", "kept", None).await;
    let epoch = app
        .vault_call(Method::GET, &format!("/api/vault/{v}/info"), &s, "c", None)
        .await
        .1["epoch"]
        .clone();
    let db = app.db.clone().unwrap();
    app.stop().await;

    let app = TestApp::spawn_on(db).await;
    let current = app.read(&v, &s, "c", "").await;
    assert_eq!(current[0]["content"], "kept");
    let (_, list) = app
        .vault_call(Method::GET, "/api/vault", &s, "c", None)
        .await;
    assert_eq!(list, json!([{"vault_id": v, "summary": "durable"}]));
    let (_, astations) = app
        .call(
            Method::GET,
            "/api/admin/astations",
            Some(&format!("Bearer {ADMIN_TOKEN}")),
            None,
        )
        .await;
    assert_eq!(astations[0]["astation_id"], astation_id);
    assert_eq!(
        app.session(&token).await.len(),
        s.len(),
        "the token still mints"
    );
    let (_, info) = app
        .vault_call(Method::GET, &format!("/api/vault/{v}/info"), &s, "c", None)
        .await;
    assert_eq!(
        info["epoch"], epoch,
        "the epoch belongs to the database, not the process"
    );
    let r = app.write(&v, &s, "c", "after restart", None).await;
    assert_eq!(r["entry_no"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_write_is_never_streamed_and_streamed_rows_are_readable() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut stream = app.open_stream(&v, &s, "w", "").await;
    stream.next_frame().await;

    // A write that announces itself inside its transaction, then rolls back.
    let mut conn = app.db.as_ref().unwrap().connect().await;
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    let phantom: i64 = sqlx::query_scalar("select nextval('vault_seq')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "insert into vault_entries (seq, vault_id, entry_no, version, kind, writer_id, content)
         values ($1, $2, 1, 1, 'content', 'ghost', 'never committed')",
    )
    .bind(phantom)
    .bind(&v)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("select pg_notify('vault_relay', $1)")
        .bind(json!({"t": "entry", "v": v, "s": phantom}).to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let real = app.write(&v, &s, "c", "committed", None).await;
    let frame = stream.next_of("entry").await;
    assert_eq!(seq(&frame), seq(&real), "the rolled-back row never arrived");
    assert_eq!(frame["content"], "committed");
    // What the stream showed is readable through REST right away.
    for _ in 0..20 {
        let r = app.write(&v, &s, "c", "more", None).await;
        let f = stream.next_of("entry").await;
        assert_eq!(seq(&f), seq(&r));
        let history = app
            .read(&v, &s, "c", &format!("history=true&since={}", seq(&f) - 1))
            .await;
        assert_eq!(history.first().map(seq), Some(seq(&f)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_get_every_row_while_the_listen_connection_is_killed() {
    let app = Arc::new(TestApp::spawn(Backend::Postgres).await);
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    let mut stream = app.open_stream(&v, &s, "w", "since=0").await;
    let total = 150;
    let writer = {
        let (app, s, v) = (app.clone(), s.clone(), v.clone());
        tokio::spawn(async move {
            for i in 0..total {
                app.write(&v, &s, "c", &format!("#{i}"), None).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let killer = {
        let db = app.db.clone().unwrap();
        tokio::spawn(async move {
            let mut conn = db.connect().await;
            let mut killed = 0;
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                killed += db.kill_listen_connections(&mut conn).await;
            }
            killed
        })
    };
    let mut seen = Vec::new();
    while seen.len() < total {
        let f = stream.next_of("entry").await;
        seen.push(seq(&f));
    }
    writer.await.unwrap();
    assert!(
        killer.await.unwrap() >= 2,
        "the LISTEN connection was really killed"
    );
    let history = app.read(&v, &s, "c", "history=true").await;
    assert_eq!(seen, history.iter().map(seq).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_on_one_database_are_one_service() {
    let a = TestApp::spawn(Backend::Postgres).await;
    let b = TestApp::spawn_on(a.db.clone().unwrap()).await;
    let (_, token, s) = a.work_session("home").await;
    // A session minted on one replica works on the other.
    let from_b = b.session(&token).await;
    let v = b.create_vault(&s, "c", "shared").await;
    let (_, list) = a
        .vault_call(Method::GET, "/api/vault", &from_b, "c", None)
        .await;
    assert_eq!(list[0]["vault_id"], v);

    let mut on_b = b
        .open_stream(&v, &s, "watch-b", "since=0&atem_id=b-host")
        .await;
    on_b.next_frame().await;
    let mut on_a = a
        .open_stream(&v, &s, "watch-a", "since=0&atem_id=a-host")
        .await;
    on_a.next_frame().await;
    let mut written = Vec::new();
    for i in 0..20 {
        let via = if i % 2 == 0 { &a } else { &b };
        written.push(seq(&via.write(&v, &s, "c", &format!("#{i}"), None).await));
    }
    let got_b: Vec<i64> = on_b.entries(20).await.iter().map(seq).collect();
    let got_a: Vec<i64> = on_a.entries(20).await.iter().map(seq).collect();
    assert_eq!(got_b, written);
    assert_eq!(got_a, written);
    // Presence spans replicas: a newcomer on B is told of the watcher on A.
    let mut newcomer = b.open_stream(&v, &s, "watch-c", "atem_id=c-host").await;
    newcomer.next_frame().await;
    let p = newcomer.next_of("presence").await;
    assert_eq!(p["count"], 3, "{p}");
    let mut ids: Vec<&str> = p["watchers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["atem_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["a-host", "b-host", "c-host"]);
    // Revoking through one replica closes the stream on the other.
    a.revoke_session(&s, &format!("session {s}")).await;
    assert_eq!(on_b.closed().await, Some(4001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_503_while_the_database_is_unreachable() {
    let db = Arc::new(TestDb::create().await);
    let app = TestApp::spawn_on(db.clone()).await;
    let (status, body) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(
        (status, body["backend"].as_str()),
        (StatusCode::OK, Some("postgres"))
    );
    // Take the database away from under the relay: refuse new connections
    // and end the open ones.
    let mut admin: sqlx::PgConnection = sqlx::Connection::connect(&crate::helpers::server_url())
        .await
        .unwrap();
    let name = &db.name;
    sqlx::query(&format!("alter database {name} allow_connections false"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(&format!(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = '{name}'"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let (status, body) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["backend"], "postgres");
    assert!(body["error"].is_string());
    // A vault request is a 503 in our shape too, not a 500.
    let (status, body) = app
        .vault_call(Method::GET, "/api/vault", "s-x", "c", None)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // And it recovers when the database is back.
    sqlx::query(&format!("alter database {name} allow_connections true"))
        .execute(&mut admin)
        .await
        .unwrap();
    let mut healthy = false;
    for _ in 0..50 {
        if app.call(Method::GET, "/health", None, None).await.0 == StatusCode::OK {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "health recovers");
}

fn relay_cli(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vault-relay"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run vault-relay");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_astation_subcommands_manage_astations_in_the_database() {
    let db = Arc::new(TestDb::create().await);
    let (ok, out, err) = relay_cli(&db, &["astation", "add", "build box"]);
    assert!(ok, "{out}{err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    let (id, token) = (field("astation_id:"), field("token:"));
    assert!(
        !err.contains(&token),
        "the token is printed once, to stdout only"
    );

    let app = TestApp::spawn_on(db.clone()).await;
    let s = app.session(&token).await;
    let v = app.create_vault(&s, "c", "made with a CLI astation").await;

    let (ok, out, _) = relay_cli(&db, &["astation", "list"]);
    assert!(
        ok && out.contains(&id) && out.contains("build box"),
        "{out}"
    );
    assert!(!out.contains(&token));
    let (ok, out, _) = relay_cli(&db, &["astation", "remove", &id]);
    assert!(ok, "{out}");
    let (status, _) = app
        .vault_call(Method::GET, &format!("/api/vault/{v}"), &s, "c", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "its sessions are revoked");
    let (ok, _, err) = relay_cli(&db, &["astation", "remove", &id]);
    assert!(!ok && err.contains("no such astation"), "{err}");

    let no_db = std::process::Command::new(env!("CARGO_BIN_EXE_vault-relay"))
        .args(["astation", "list"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!no_db.status.success());
    assert!(String::from_utf8_lossy(&no_db.stderr).contains("DATABASE_URL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_grant_subcommand_grants_a_pairing() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let (_, token) = app.astation("desk").await;
    let p = app.pair().await;
    let (id, otp) = (p["id"].as_str().unwrap(), p["otp"].as_str().unwrap());
    let args = ["session", "grant", id, otp, "--relay-url", &app.base].map(str::to_string);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_vault-relay"))
            .args(args)
            .env("ASTATION_TOKEN", &token)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("granted"));
    assert_eq!(app.session_status(id).await, "granted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_entries_and_resumes_after_a_restart_without_duplicates() {
    use std::io::BufRead;

    let app = TestApp::spawn(Backend::Postgres).await;
    let (_, _, s) = app.work_session("home").await;
    let v = app.create_vault(&s, "c", "").await;
    app.write(&v, &s, "atem-a", "before watching", None).await;

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vault-relay"))
        .args(["watch", &v, "--relay-url", &app.base, "--since", "0"])
        .env("RELAY_SESSION", &s)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start watch");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let mut wait_for = async |lines: &mut Vec<String>, n: usize| {
        while lines.len() < n {
            let line = tokio::time::timeout(Duration::from_secs(15), rx.recv())
                .await
                .expect("watch printed in time")
                .expect("watch is running");
            lines.push(line);
        }
    };
    app.write(&v, &s, "atem-b", "while watching", None).await;
    app.write(&v, &s, "atem-b", "before watching, fixed", Some(1))
        .await;
    wait_for(&mut lines, 3).await;

    // Restart the relay on the same address and database.
    let (addr, db) = (app.addr, app.db.clone().unwrap());
    app.stop().await;
    let mut config = crate::helpers::test_config(Some(db.url.clone()));
    config.port = addr.port();
    let app = TestApp::start(config, Some(db)).await;
    app.write(&v, &s, "atem-a", "after the restart", None).await;
    wait_for(&mut lines, 4).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        lines,
        vec![
            "e1 v1 [atem-a] before watching",
            "e2 v1 [atem-b] while watching",
            "e1 v2 [atem-b] before watching, fixed",
            "e3 v1 [atem-a] after the restart",
        ]
    );
    // Nothing more (no duplicate replay) arrived in the meantime.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err());
}

/// Plans made for no vault in particular (Postgres's cached generic plans,
/// which every prepared read and every statement inside the write
/// functions runs on) stay on the indexes that lead with the vault, even
/// when the statistics were gathered while one vault held nearly every
/// row: otherwise a read or write of any other vault scans the whole table
/// (migrations/0011).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_vault_holding_every_row_does_not_make_others_scan_the_table() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let (_, _, s) = app.work_session("home").await;
    let big = app.create_vault(&s, "c", "").await;
    let small = app.create_vault(&s, "c", "").await;
    let mut conn = app.db.as_ref().unwrap().connect().await;
    sqlx::query(
        "insert into vault_entries (seq, vault_id, entry_no, version, kind, writer_id, content)
         select nextval('vault_seq'), $1, n, 1, 'content', 'c', 'bulk'
         from generate_series(1, 20000) n",
    )
    .bind(&big)
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "update vaults set next_entry_no = 20001,
                head_seq = (select max(seq) from vault_entries where vault_id = $1)
         where id = $1",
    )
    .bind(&big)
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("analyze vault_entries")
        .execute(&mut conn)
        .await
        .unwrap();

    sqlx::query("set plan_cache_mode = force_generic_plan")
        .execute(&mut conn)
        .await
        .unwrap();
    let plan_of = async |conn: &mut sqlx::PgConnection, name: usize, sql: &str, args: &str| {
        sqlx::raw_sql(&format!("prepare q{name} as {sql}"))
            .execute(&mut *conn)
            .await
            .unwrap();
        let plan: Value =
            sqlx::query_scalar(&format!("explain (format json) execute q{name}({args})"))
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        plan
    };
    // The where and order clauses of the store's reads of one vault
    // (src/store/postgres/mod.rs): entries_after, the history view and the
    // current view. Each must read through an index that leads with the
    // vault, never the primary key on seq nor the whole table.
    let shapes = [
        (
            "select seq from vault_entries where vault_id = $1::text and seq > $2::bigint order by seq limit $3::bigint",
            format!("'{small}', 0, 100"),
        ),
        (
            "select seq from vault_entries where vault_id = $1::text and seq > $2::bigint order by seq",
            format!("'{small}', 0"),
        ),
        (
            "select * from (select distinct on (entry_no) seq, entry_no from vault_entries
             where vault_id = $1::text order by entry_no, version desc) newest
             where seq > $2::bigint order by entry_no",
            format!("'{small}', 0"),
        ),
    ];
    for (name, (sql, args)) in shapes.iter().enumerate() {
        let plan = plan_of(&mut conn, name, sql, args).await;
        let text = plan.to_string();
        assert!(
            index_cond_on_vault(&plan)
                && !text.contains("vault_entries_pkey")
                && !text.contains("Seq Scan"),
            "{sql}: the generic plan does not stay on the vault's rows: {text}"
        );
    }

    // And through the relay: the small vault reads and writes as ever.
    let w = app.write(&small, &s, "c", "one", None).await;
    let rows = app.read(&small, &s, "c", "history=true").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(seq(&rows[0]), seq(&w));
    let next = app.write(&big, &s, "c", "after the bulk", None).await;
    assert_eq!(next["entry_no"], 20001);
}

/// Whether some node of an EXPLAIN (FORMAT JSON) plan finds its rows by the
/// vault in an index condition.
fn index_cond_on_vault(plan: &Value) -> bool {
    match plan {
        Value::Object(node) => {
            node.get("Index Cond")
                .and_then(Value::as_str)
                .is_some_and(|c| c.contains("vault_id = $1"))
                || node.values().any(index_cond_on_vault)
        }
        Value::Array(items) => items.iter().any(index_cond_on_vault),
        _ => false,
    }
}
