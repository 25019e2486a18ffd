//! The audit chain: audited writes on either backend, and what an auditor reads over HTTP.

use std::sync::Arc;

use sos_audit::note::NoteSigner;
use sos_audit::tlog::{Checkpointer, EntryProof};
use sos_audit::{AuditEntry, AuditStore as _, ExpectRows, NewEntry, PgAuditChain, SqliteAuditChain};
use sos_core::postgres::PgTxConnection;
use sos_core::{Clock, TenantId};
use sqlx::{PgConnection, SqliteConnection};

use crate::db::{Database, Statement, bind_all};

/// The audit chain store of the server's database.
#[derive(Debug, Clone)]
pub(crate) enum Chain {
    Sqlite(SqliteAuditChain),
    Postgres(PgAuditChain),
}

/// A borrowed connection inside an open transaction, on either backend.
#[derive(Debug)]
pub(crate) enum Conn<'a> {
    Sqlite(&'a mut SqliteConnection),
    Postgres(&'a mut PgConnection),
}

/// An open transaction of the server's own, on either backend. A PostgreSQL one borrows its
/// connection from a [`TxSlot`] (see [`Chain::begin`]).
#[derive(Debug)]
pub(crate) enum Tx<'c> {
    Sqlite(sqlx::Transaction<'c, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'c, sqlx::Postgres>),
}

/// Holds the connection of a PostgreSQL [`Tx`] while the transaction borrows it: the
/// connection's owner closes it if its `BEGIN` is cancelled (sqlx#4393, see
/// `sos_core::postgres`). Unused on SQLite.
pub(crate) type TxSlot = Option<PgTxConnection>;

impl Tx<'_> {
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Sqlite(tx) => Conn::Sqlite(&mut *tx),
            Self::Postgres(tx) => Conn::Postgres(&mut *tx),
        }
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Sqlite(tx) => tx.commit().await,
            Self::Postgres(tx) => tx.commit().await,
        }
    }
}

fn storage(error: sqlx::Error) -> sos_audit::Error {
    sos_audit::Error::Storage(Box::new(error))
}

impl Conn<'_> {
    /// Runs `statements` as the host write of an audited append of `entry`: both commit with the
    /// surrounding transaction, or neither does.
    pub(crate) async fn audited(
        &mut self,
        chain: &Chain,
        entry: NewEntry,
        expect: ExpectRows,
        statements: Vec<Statement>,
    ) -> sos_audit::Result<AuditEntry> {
        match (self, chain) {
            (Conn::Sqlite(conn), Chain::Sqlite(chain)) => {
                chain
                    .audited(conn, entry, expect, move |conn| {
                        Box::pin(async move {
                            let mut rows = 0;
                            for statement in &statements {
                                rows += bind_all!(sqlx::query(statement.sql), &statement.binds)
                                    .execute(&mut *conn)
                                    .await?
                                    .rows_affected();
                            }
                            Ok::<u64, sqlx::Error>(rows)
                        })
                    })
                    .await
            }
            (Conn::Postgres(conn), Chain::Postgres(chain)) => {
                chain
                    .audited(conn, entry, expect, move |conn| {
                        Box::pin(async move {
                            let mut rows = 0;
                            for statement in &statements {
                                rows += bind_all!(sqlx::query(statement.sql), &statement.binds)
                                    .execute(&mut *conn)
                                    .await?
                                    .rows_affected();
                            }
                            Ok::<u64, sqlx::Error>(rows)
                        })
                    })
                    .await
            }
            _ => Err(sos_audit::Error::InvalidEntry {
                field: "backend",
                reason: "the audit chain and the transaction are on different databases",
            }),
        }
    }

    /// Reads one optional `(TEXT, integer)` row inside the transaction.
    pub(crate) async fn text_int(
        &mut self,
        sql: &'static str,
        binds: &[crate::db::Bind],
    ) -> Result<Option<(String, i64)>, sqlx::Error> {
        match self {
            Conn::Sqlite(conn) => {
                bind_all!(sqlx::query_as::<_, (String, i64)>(sql), binds).fetch_optional(&mut **conn).await
            }
            Conn::Postgres(conn) => {
                bind_all!(sqlx::query_as::<_, (String, i64)>(sql), binds).fetch_optional(&mut **conn).await
            }
        }
    }

    /// Runs one unaudited statement inside the transaction (bookkeeping such as a status), and
    /// returns the rows it changed.
    pub(crate) async fn execute(&mut self, statement: &Statement) -> Result<u64, sqlx::Error> {
        match self {
            Conn::Sqlite(conn) => Ok(bind_all!(sqlx::query(statement.sql), &statement.binds)
                .execute(&mut **conn)
                .await?
                .rows_affected()),
            Conn::Postgres(conn) => Ok(bind_all!(sqlx::query(statement.sql), &statement.binds)
                .execute(&mut **conn)
                .await?
                .rows_affected()),
        }
    }
}

impl Chain {
    pub(crate) fn new(database: &Database, clock: Arc<dyn Clock>) -> Self {
        match database {
            Database::Sqlite(pool) => Self::Sqlite(SqliteAuditChain::new(pool.clone()).with_clock(clock)),
            Database::Postgres(pool) => Self::Postgres(PgAuditChain::new(pool.clone()).with_clock(clock)),
        }
    }

    /// Opens a transaction for audited writes (`BEGIN IMMEDIATE` on SQLite). On PostgreSQL the
    /// connection goes into `slot` and the transaction borrows it, so that a request dropped
    /// mid-`BEGIN` closes the connection instead of returning it to the pool inside a
    /// transaction nobody owns.
    pub(crate) async fn begin<'c>(&self, slot: &'c mut TxSlot) -> sos_audit::Result<Tx<'c>> {
        match self {
            Self::Sqlite(chain) => Ok(Tx::Sqlite(chain.begin().await?)),
            Self::Postgres(chain) => {
                let connection = match slot {
                    Some(connection) => connection,
                    None => slot.insert(PgTxConnection::acquire(chain.pool()).await.map_err(storage)?),
                };
                Ok(Tx::Postgres(connection.begin().await.map_err(storage)?))
            }
        }
    }

    /// One audited write in a transaction of its own.
    pub(crate) async fn write(
        &self,
        entry: NewEntry,
        expect: ExpectRows,
        statements: Vec<Statement>,
    ) -> sos_audit::Result<AuditEntry> {
        let mut slot = None;
        let mut tx = self.begin(&mut slot).await?;
        let appended = tx.conn().audited(self, entry, expect, statements).await?;
        tx.commit().await.map_err(storage)?;
        Ok(appended)
    }

    /// The tenant's entries with `seq > after`, at most `limit`.
    pub(crate) async fn entries(
        &self,
        tenant: &TenantId,
        after: u64,
        limit: u32,
    ) -> sos_audit::Result<Vec<AuditEntry>> {
        match self {
            Self::Sqlite(chain) => chain.read_page(tenant, after, limit).await,
            Self::Postgres(chain) => chain.read_page(tenant, after, limit).await,
        }
    }

    /// Verifies the tenant's whole chain.
    pub(crate) async fn verify(&self, tenant: &TenantId) -> sos_audit::Result<sos_audit::Verdict> {
        match self {
            Self::Sqlite(chain) => sos_audit::verify_store(chain, tenant, None, |_| {}).await,
            Self::Postgres(chain) => sos_audit::verify_store(chain, tenant, None, |_| {}).await,
        }
    }
}

/// Refuses to start with a signing key that did not sign the checkpoints the database already
/// holds (the key file was lost and a new one generated, or another key was given): every
/// checkpoint and proof would then fail at run time. The newest recorded checkpoint must verify
/// with `signer`'s verifier key.
pub(crate) async fn check_signing_key(
    database: &Database,
    signer: &NoteSigner,
    key_path: &std::path::Path,
) -> anyhow::Result<()> {
    let notes = database
        .text_rows("SELECT note FROM audit_checkpoints ORDER BY signed_us DESC, size DESC LIMIT 1", &[])
        .await?;
    let Some(note) = notes.first() else { return Ok(()) };
    if let Err(error) = sos_audit::note::open_note(note.as_bytes(), &[signer.verifier()]) {
        anyhow::bail!(
            "the database holds checkpoints that the signing key {path} did not sign ({error}); the key \
             file was lost or replaced (a missing key is generated anew). Restore the original signing \
             key at {path} (replacing any key generated since), or move the recorded checkpoints aside \
             (the audit_checkpoints table) to start a new series of checkpoints with this key",
            path = key_path.display()
        );
    }
    Ok(())
}

/// The checkpointer of the server's chain: it signs C2SP checkpoints of each tenant's tree (kept
/// as tiles in the database) and proves entries against them.
#[derive(Debug, Clone)]
pub(crate) enum Checkpoints {
    Sqlite(Arc<Checkpointer<SqliteAuditChain>>),
    Postgres(Arc<Checkpointer<PgAuditChain>>),
}

impl Checkpoints {
    pub(crate) fn new(chain: &Chain, signer: &NoteSigner, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        // The signer is cloned through its key string: the checkpointer owns its copy.
        let signer = || NoteSigner::from_key_string(&signer.to_key_string());
        Ok(match chain {
            Chain::Sqlite(store) => {
                Self::Sqlite(Arc::new(Checkpointer::new(store.clone(), signer()?).with_clock(clock)))
            }
            Chain::Postgres(store) => {
                Self::Postgres(Arc::new(Checkpointer::new(store.clone(), signer()?).with_clock(clock)))
            }
        })
    }

    /// A checkpoint of the tenant's whole chain: the latest one, signed now when the chain grew.
    pub(crate) async fn now(&self, tenant: &TenantId) -> sos_audit::Result<CheckpointView> {
        let (signed, verifier) = match self {
            Self::Sqlite(checkpointer) => {
                (checkpointer.checkpoint_now(tenant).await?, checkpointer.verifier().clone())
            }
            Self::Postgres(checkpointer) => {
                (checkpointer.checkpoint_now(tenant).await?, checkpointer.verifier().clone())
            }
        };
        Ok(CheckpointView {
            origin: signed.checkpoint.origin.clone(),
            size: signed.size(),
            root: signed.root().to_hex(),
            note: signed.note,
            verifier_key: verifier.to_key_string(),
        })
    }

    /// The inclusion proof of entry `seq` against the latest checkpoint (signing one first when
    /// the entry is newer), as `sos-audit prove` prints it.
    pub(crate) async fn prove(&self, tenant: &TenantId, seq: u64) -> sos_audit::Result<EntryProof> {
        match self {
            Self::Sqlite(checkpointer) => checkpointer.prove(tenant, seq).await,
            Self::Postgres(checkpointer) => checkpointer.prove(tenant, seq).await,
        }
    }

    /// Signs due checkpoints (every 256 entries, or 60 s after the oldest unsigned one) until
    /// `shutdown` resolves.
    pub(crate) async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        let report = |tenant: Option<&TenantId>,
                      outcome: &sos_audit::Result<sos_audit::tlog::SignedCheckpoint>| {
            match outcome {
                Ok(signed) => {
                    tracing::debug!(tenant = ?tenant.map(TenantId::as_str), size = signed.size(), "checkpoint signed")
                }
                Err(error) => {
                    tracing::error!(tenant = ?tenant.map(TenantId::as_str), %error, "checkpoint refused; a person must look")
                }
            }
        };
        match self {
            Self::Sqlite(checkpointer) => checkpointer.run(shutdown, report).await,
            Self::Postgres(checkpointer) => checkpointer.run(shutdown, report).await,
        }
    }
}

/// A signed checkpoint as served at `GET …/audit/checkpoint`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CheckpointView {
    /// The log's origin, `sos-server/<tenant>`.
    pub origin: String,
    /// The number of entries covered.
    pub size: u64,
    /// The RFC 9162 root hash, hex.
    pub root: String,
    /// The C2SP signed note (checkpoint text and signature line).
    pub note: String,
    /// The verifier key that checks `note`.
    pub verifier_key: String,
}

/// An entry in the JSON form of the CLI's `export` (one JSONL line).
pub(crate) fn entry_json(entry: &AuditEntry) -> serde_json::Value {
    let mut line = Vec::new();
    match sos_audit::write_jsonl_line(&mut line, entry).ok().and_then(|()| serde_json::from_slice(&line).ok())
    {
        Some(value) => value,
        None => serde_json::json!({ "tenant": entry.tenant.as_str(), "seq": entry.seq }),
    }
}
