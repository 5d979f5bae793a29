//! A fresh database for each side of each case.

use crate::Result;

/// A database of its own for one case.
pub(crate) struct ScratchDb {
    name: String,
    pub(crate) url: String,
}

impl ScratchDb {
    pub(crate) async fn create(server: &str, admin: &mut sqlx::PgConnection) -> Result<ScratchDb> {
        let name = format!("vr_bench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("create database {name}"))
            .execute(&mut *admin)
            .await
            .map_err(|e| {
                format!("cannot create a scratch database (the role needs createdb): {e}")
            })?;
        Ok(ScratchDb {
            url: with_database(server, &name),
            name,
        })
    }

    pub(crate) async fn drop_with(self, admin: &mut sqlx::PgConnection) {
        let sql = format!("drop database if exists {} with (force)", self.name);
        if let Err(e) = sqlx::query(&sql).execute(&mut *admin).await {
            eprintln!("warning: could not drop {}: {e}", self.name);
        }
    }
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let base = base.rsplit_once('/').map(|(b, _)| b).unwrap_or(base);
    format!("{base}/{db}{query}")
}
