//! A fresh database for each side of each case.

use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

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
        // sqlx renders the URL, with the server's user, password and settings.
        let url = server.parse::<PgConnectOptions>()?.database(&name);
        Ok(ScratchDb {
            url: url.to_url_lossy().to_string(),
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
