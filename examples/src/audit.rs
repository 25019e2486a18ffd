//! The audit chain: audited writes on either backend, and what an auditor reads over HTTP.

use std::sync::Arc;

use sos_audit::merkle::{InclusionProof, MemoryTree};
use sos_audit::note::{Checkpoint, NoteSigner};
use sos_audit::{AuditEntry, AuditStore as _, ExpectRows, NewEntry, PgAuditChain, SqliteAuditChain};
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

/// An open transaction of the server's own, on either backend.
#[derive(Debug)]
pub(crate) enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Tx {
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

    /// Opens a transaction for audited writes (`BEGIN IMMEDIATE` on SQLite).
    pub(crate) async fn begin(&self) -> sos_audit::Result<Tx> {
        match self {
            Self::Sqlite(chain) => Ok(Tx::Sqlite(chain.begin().await?)),
            Self::Postgres(chain) => Ok(Tx::Postgres(chain.pool().begin().await.map_err(storage)?)),
        }
    }

    /// One audited write in a transaction of its own.
    pub(crate) async fn write(
        &self,
        entry: NewEntry,
        expect: ExpectRows,
        statements: Vec<Statement>,
    ) -> sos_audit::Result<AuditEntry> {
        let mut tx = self.begin().await?;
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

    /// The Merkle tree over the tenant's entries (leaf data: each entry's 32-byte hash).
    async fn tree(&self, tenant: &TenantId) -> sos_audit::Result<MemoryTree> {
        let mut tree = MemoryTree::new();
        let mut after = 0;
        loop {
            let page = self.entries(tenant, after, sos_audit::PAGE_SIZE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for entry in &page {
                tree.push(entry.hash.as_bytes());
            }
        }
        Ok(tree)
    }

    /// The latest signed checkpoint of the tenant's chain.
    pub(crate) async fn checkpoint(
        &self,
        tenant: &TenantId,
        signer: &NoteSigner,
    ) -> anyhow::Result<SignedCheckpoint> {
        use sos_audit::merkle::SubtreeHashes as _;
        let tree = self.tree(tenant).await?;
        let checkpoint = Checkpoint {
            origin: format!("{}/{}", signer.name(), tenant),
            size: tree.leaf_count(),
            root: tree.root(),
            extensions: Vec::new(),
        };
        let note = checkpoint.sign(signer)?;
        Ok(SignedCheckpoint {
            origin: checkpoint.origin,
            size: checkpoint.size,
            root: checkpoint.root.to_hex(),
            note,
            verifier_key: signer.verifier().to_key_string(),
        })
    }

    /// The inclusion proof of entry `seq` in the tree of the tenant's whole chain, or `None` when
    /// there is no such entry.
    pub(crate) async fn proof(&self, tenant: &TenantId, seq: u64) -> anyhow::Result<Option<InclusionProof>> {
        use sos_audit::merkle::SubtreeHashes as _;
        let tree = self.tree(tenant).await?;
        if seq == 0 || seq > tree.leaf_count() {
            return Ok(None);
        }
        Ok(Some(InclusionProof::generate(&tree, seq - 1, tree.leaf_count())?))
    }
}

/// A signed checkpoint as served at `GET …/audit/checkpoint`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SignedCheckpoint {
    /// The log's origin, `<key name>/<tenant>`.
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
