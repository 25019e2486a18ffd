//! Appends a few audit entries for tenant `acme` to a SQLite database (created and migrated if
//! needed), so that the `sos-audit` commands of the README have a chain to work on.
//!
//! Run: `cargo run -p sos-audit --features sqlite --example demo_chain -- demo.sqlite`

use sos_audit::{AuditStore, NewEntry, SqliteAuditChain, sqlite_migrator};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "demo.sqlite".to_owned());
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(options).await?;
    sqlite_migrator().run(&pool).await?;
    let chain = SqliteAuditChain::new(pool);
    let tenant: sos_core::TenantId = "acme".parse()?;
    for stage in ["new", "qualified", "won"] {
        let entry = NewEntry::new(
            tenant.clone(),
            "agent:closer",
            "deal.stage",
            "deal/42",
            &serde_json::json!({ "stage": stage }),
        )?;
        let stored = chain.append(entry).await?;
        println!("appended {}", stored.as_head());
    }
    Ok(())
}
