//! Adversarial finding: an SOS call cancelled while its PostgreSQL `BEGIN` was in flight handed
//! the host's pool a connection inside an open transaction (sqlx 0.8.6 and 0.9.0,
//! transact-rs/sqlx#4393). The next borrower's autocommit statements then ran inside that
//! transaction: their writes were invisible to everyone else (a webhook guard's two-phase claim
//! among them, so a second worker ran the effect again) and their row locks stayed held.
//!
//! Each test runs one SOS operation on a pool of one connection with its own
//! `application_name` and drops it (a provider disconnecting, `tokio::time::timeout`,
//! `select!`): first exactly while each of its `BEGIN`s is in flight (a TCP proxy in front of
//! PostgreSQL holds the `BEGIN` until the operation is dropped), then after windows swept
//! finely across its other round trips. After each drop it takes the pool's connection back and
//! checks that it is not `idle in transaction` and that an autocommit insert through it is
//! visible from another connection.

use std::future::Future;
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sos_audit::tlog::MerkleStore as _;
use sos_audit::{AuditStore as _, NewEntry, PgAuditChain};
use sos_core::postgres::PgTxConnection;
use sos_core::{Sha256Digest, SystemClock, TenantId};
use sos_identity::{AgentName, AgentRole, IdentityRegistry as _, PostgresRegistry};
use sos_ruliads::ceiling::{Attempt, CeilingConfig, PgCeiling, TriggerCeiling as _};
use sos_testkit::PgTestDatabase;
use sos_webhooks::{EventKey, PgStore, WebhookGuard};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Exact cancellations at each `BEGIN` of an operation.
const AT_BEGIN_REPEATS: u32 = 10;
/// The swept cancellation windows: 0 (one poll, then dropped) to 1.5 ms in 20 µs steps.
const WINDOWS: u64 = 75;
const WINDOW_STEP: Duration = Duration::from_micros(20);

/// What one sweep saw.
#[derive(Debug, Default)]
struct Sweep {
    /// Operations dropped while a `BEGIN` was in flight.
    cancelled_at_begin: u32,
    /// Operations dropped at the end of a swept window.
    cancelled: u32,
    /// Times the pool's next connection was `idle in transaction`.
    idle_in_transaction: u32,
    /// Times an autocommit insert through the pool's next connection was invisible outside.
    invisible_writes: u32,
}

impl Sweep {
    fn poisoned(&self) -> u32 {
        self.idle_in_transaction.max(self.invisible_writes)
    }
}

async fn database() -> PgTestDatabase {
    let migrators = [
        sos_audit::postgres_migrator(),
        sos_webhooks::postgres_migrator(),
        sos_ruliads::store::postgres_migrator(),
        sos_identity::postgres_migrator(),
    ];
    let database = PgTestDatabase::with_pool_size(&migrators.iter().collect::<Vec<_>>(), 2).await;
    sqlx::query("CREATE TABLE cancel_probe (id BIGINT PRIMARY KEY)").execute(database.pool()).await.unwrap();
    database
}

/// The host's pool: one connection through `trap`, named so that `pg_stat_activity` tells it
/// apart.
async fn host_pool(database: &PgTestDatabase, trap: &BeginTrap, application_name: &str) -> PgPool {
    let options = PgConnectOptions::from_str(database.url())
        .unwrap()
        .host("127.0.0.1")
        .port(trap.port)
        .ssl_mode(PgSslMode::Disable)
        .application_name(application_name);
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .unwrap()
}

/// A TCP proxy in front of PostgreSQL that, once armed, holds the n-th `BEGIN` a client sends
/// and hands the test a release for it: the test drops the operation exactly while its
/// `BEGIN` is in flight, then lets the `BEGIN` through.
struct BeginTrap {
    port: u16,
    /// The number of `BEGIN`s to let through before holding one; negative when disarmed.
    armed: Arc<std::sync::atomic::AtomicI32>,
    held: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
}

impl BeginTrap {
    async fn start(database: &PgTestDatabase) -> Self {
        let server = PgConnectOptions::from_str(database.url()).unwrap();
        let server = (server.get_host().to_owned(), server.get_port());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(std::sync::atomic::AtomicI32::new(-1));
        let (holder, held) = mpsc::unbounded_channel();
        let trap_armed = Arc::clone(&armed);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect((server.0.as_str(), server.1)).await.unwrap();
                tokio::spawn(relay(client, server, Arc::clone(&trap_armed), holder.clone()));
            }
        });
        Self { port, armed, held }
    }

    fn arm(&self, begins_to_pass: i32) {
        self.armed.store(begins_to_pass, Ordering::SeqCst);
    }

    /// Disarms, and lets through any `BEGIN` still held.
    fn disarm(&mut self) {
        self.armed.store(-1, Ordering::SeqCst);
        while let Ok(release) = self.held.try_recv() {
            release.send(()).ok();
        }
    }
}

/// Copies one client connection to the server, holding a `BEGIN` (a simple-protocol Query
/// message) when the trap says so. SSL is off, so the first message is the startup message.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<std::sync::atomic::AtomicI32>,
    holder: mpsc::UnboundedSender<oneshot::Sender<()>>,
) -> std::io::Result<()> {
    // Small messages written one by one: without TCP_NODELAY each would wait for a delayed ACK.
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    tokio::spawn(async move { tokio::io::copy(&mut server_read, &mut client_write).await });
    let mut length = [0u8; 4];
    client_read.read_exact(&mut length).await?;
    let mut startup = vec![0u8; (u32::from_be_bytes(length) as usize).saturating_sub(4)];
    client_read.read_exact(&mut startup).await?;
    server_write.write_all(&length).await?;
    server_write.write_all(&startup).await?;
    loop {
        let mut header = [0u8; 5];
        client_read.read_exact(&mut header).await?;
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; length.saturating_sub(4)];
        client_read.read_exact(&mut body).await?;
        if header[0] == b'Q' && body.starts_with(b"BEGIN") {
            let hold = armed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                0 => Some(-1),
                left if left > 0 => Some(left - 1),
                _ => None,
            }) == Ok(0);
            if hold {
                let (release, released) = oneshot::channel();
                if holder.send(release).is_ok() {
                    released.await.ok();
                }
            }
        }
        let mut message = header.to_vec();
        message.extend_from_slice(&body);
        server_write.write_all(&message).await?;
    }
}

/// Runs `operation` and drops it once `window` has passed (polled at least once), as a timeout
/// or a disconnecting client would. Yielding, not sleeping, keeps the window finer than the
/// timer's millisecond.
async fn cancel_after<F: Future>(operation: F, window: Duration) -> Option<F::Output> {
    let deadline = Instant::now() + window;
    tokio::select! {
        biased;
        output = operation => Some(output),
        () = async {
            while Instant::now() < deadline {
                tokio::task::yield_now().await;
            }
        } => None,
    }
}

static PROBE: AtomicI64 = AtomicI64::new(0);

/// Takes the pool's connection back (after its release ping) and checks it from outside. A
/// poisoned connection is closed so that the next try starts clean.
async fn check_pool(pool: &PgPool, outside: &PgPool, sweep: &mut Sweep) {
    let mut connection = pool.acquire().await.expect("the pool gives its connection back");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *connection).await.unwrap();
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(outside)
        .await
        .unwrap();
    let probe = PROBE.fetch_add(1, Ordering::Relaxed);
    sqlx::query("INSERT INTO cancel_probe (id) VALUES ($1)")
        .bind(probe)
        .execute(&mut *connection)
        .await
        .unwrap();
    let visible: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM cancel_probe WHERE id = $1)")
        .bind(probe)
        .fetch_one(outside)
        .await
        .unwrap();
    let idle_in_transaction = state.as_deref() == Some("idle in transaction");
    sweep.idle_in_transaction += u32::from(idle_in_transaction);
    sweep.invisible_writes += u32::from(!visible);
    if idle_in_transaction || !visible {
        connection.close().await.ok();
    }
}

/// Connections of `application_name` left `idle in transaction`, once closing ones are gone.
async fn idle_in_transaction(outside: &PgPool, application_name: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'idle in transaction'",
        )
        .bind(application_name)
        .fetch_one(outside)
        .await
        .unwrap();
        if count == 0 || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Drops `operation` (given the host's pool and a fresh number) exactly while each of its
/// `begins` `BEGIN`s is in flight, then at the end of windows swept from 0 to 1.5 ms, checking
/// the host's pool after each drop.
async fn sweep<F>(database: &PgTestDatabase, label: &str, begins: i32, mut operation: F) -> Sweep
where
    F: FnMut(PgPool, i64) -> BoxFuture<'static, anyhow::Result<()>>,
{
    let mut sweep = Sweep::default();
    let mut trap = BeginTrap::start(database).await;
    let application_name = format!("sos-cancel-{label}-{}", std::process::id());
    let pool = host_pool(database, &trap, &application_name).await;
    for begin in 0..begins {
        for _ in 0..AT_BEGIN_REPEATS {
            let number = PROBE.fetch_add(1, Ordering::Relaxed);
            trap.arm(begin);
            let mut running = operation(pool.clone(), number);
            let held = tokio::select! {
                biased;
                result = &mut running => {
                    result.unwrap_or_else(|error| panic!("{label}: the operation failed: {error:#}"));
                    None
                }
                held = trap.held.recv() => held,
            };
            drop(running);
            if let Some(release) = held {
                sweep.cancelled_at_begin += 1;
                release.send(()).ok();
            }
            trap.disarm();
            check_pool(&pool, database.pool(), &mut sweep).await;
        }
    }
    for step in 0..WINDOWS {
        let number = PROBE.fetch_add(1, Ordering::Relaxed);
        let window = WINDOW_STEP * u32::try_from(step).unwrap();
        match cancel_after(operation(pool.clone(), number), window).await {
            Some(result) => result.unwrap_or_else(|error| panic!("{label}: the operation failed: {error:#}")),
            None => sweep.cancelled += 1,
        }
        check_pool(&pool, database.pool(), &mut sweep).await;
    }
    pool.close().await;
    let left = idle_in_transaction(database.pool(), &application_name).await;
    sweep.idle_in_transaction += u32::try_from(left).unwrap();
    eprintln!(
        "{label}: {sweep:?} over {} tries",
        i64::from(begins) * i64::from(AT_BEGIN_REPEATS) + WINDOWS as i64
    );
    sweep
}

fn tenant() -> TenantId {
    "acme".parse().unwrap()
}

/// The upstream bug this file guards against, witnessed: a plain `pool.begin()` dropped
/// mid-`BEGIN` returns its connection to the pool inside a transaction. When this test fails,
/// sqlx fixed #4393 and `sos_core::postgres::PgTxConnection` can go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_plain_pool_begin_poisons_the_shared_pool_upstream_bug() {
    let database = database().await;
    let sweep = sweep(&database, "plain", 1, |pool, _| {
        Box::pin(async move {
            let transaction = pool.begin().await?;
            transaction.commit().await?;
            Ok(())
        })
    })
    .await;
    assert_eq!(sweep.cancelled_at_begin, AT_BEGIN_REPEATS, "every try was dropped mid-BEGIN: {sweep:?}");
    // Every drop mid-BEGIN poisons the pool (the sweep may add a few more).
    assert!(
        sweep.idle_in_transaction >= sweep.cancelled_at_begin,
        "a pool.begin() dropped mid-BEGIN no longer poisons the pool: {sweep:?}"
    );
    assert!(sweep.invisible_writes >= sweep.cancelled_at_begin, "{sweep:?}");
}

/// `PgTxConnection::begin` dropped at any point closes its connection instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_pg_tx_connection_begin_never_poisons_the_pool() {
    let database = database().await;
    let sweep = sweep(&database, "wrapper", 1, |pool, _| {
        Box::pin(async move {
            let mut connection = PgTxConnection::acquire(&pool).await?;
            let transaction = connection.begin().await?;
            transaction.commit().await?;
            Ok(())
        })
    })
    .await;
    assert_eq!(sweep.cancelled_at_begin, AT_BEGIN_REPEATS, "every try was dropped mid-BEGIN: {sweep:?}");
    assert_eq!(sweep.poisoned(), 0, "{sweep:?}");
}

/// The webhook guard's transactional claim, dropped at any point (a provider hanging up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_webhook_guard_transactional_never_poisons_the_host_pool() {
    let database = database().await;
    let sweep = sweep(&database, "webhooks", 1, |pool, number| {
        Box::pin(async move {
            let guard = WebhookGuard::new(PgStore::new(pool), SystemClock);
            let key = EventKey::new(tenant(), "stripe", &format!("evt_{number}"))?;
            guard
                .transactional(&key, b"{}", |transaction| {
                    Box::pin(async move {
                        sqlx::query("SELECT 1").execute(&mut **transaction).await?;
                        Ok::<(), sqlx::Error>(())
                    })
                })
                .await
                .map_err(|error| anyhow::anyhow!("{error}"))?;
            Ok(())
        })
    })
    .await;
    assert_eq!(sweep.cancelled_at_begin, AT_BEGIN_REPEATS, "every try was dropped mid-BEGIN: {sweep:?}");
    assert_eq!(sweep.poisoned(), 0, "{sweep:?}");
}

/// The trigger ceiling's start and finish (both open a transaction; a refusal gives the
/// connection back before writing through the pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_trigger_ceiling_never_poisons_the_host_pool() {
    let database = database().await;
    let sweep = sweep(&database, "ceiling", 2, |pool, number| {
        Box::pin(async move {
            let ceiling = PgCeiling::new(pool, CeilingConfig::default());
            let cause = Sha256Digest::of(&number.to_be_bytes());
            let attempt = Attempt { tenant: tenant(), cause, attribute: String::new() };
            let now = chrono::Utc::now();
            ceiling.try_start(now, &attempt).await?;
            ceiling.finish(now, &tenant(), &cause).await?;
            Ok(())
        })
    })
    .await;
    assert_eq!(sweep.cancelled_at_begin, 2 * AT_BEGIN_REPEATS, "every try was dropped mid-BEGIN: {sweep:?}");
    assert_eq!(sweep.poisoned(), 0, "{sweep:?}");
}

/// The identity registry's registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_identity_register_never_poisons_the_host_pool() {
    let database = database().await;
    let sweep = sweep(&database, "identity", 1, |pool, number| {
        Box::pin(async move {
            let registry = PostgresRegistry::new(pool, std::sync::Arc::new(SystemClock));
            let name = AgentName::new(format!("agent-{number}"))?;
            registry.register(&tenant(), &name, &AgentRole::new("researcher")?).await?;
            Ok(())
        })
    })
    .await;
    assert_eq!(sweep.cancelled_at_begin, AT_BEGIN_REPEATS, "every try was dropped mid-BEGIN: {sweep:?}");
    assert_eq!(sweep.poisoned(), 0, "{sweep:?}");
}

/// The audit chain's own-transaction append (a fresh chain each time, so it takes the locked
/// path with its BEGIN) and the Merkle tree's extension.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_audit_append_and_extend_tree_never_poison_the_host_pool() {
    let database = database().await;
    let sweep = sweep(&database, "audit", 2, |pool, number| {
        Box::pin(async move {
            let chain = PgAuditChain::new(pool);
            let entry =
                NewEntry::new(tenant(), "alice", "update", format!("deal-{number}"), &serde_json::json!({}))?;
            chain.append(entry).await?;
            chain.extend_tree(&tenant(), 64).await?;
            Ok(())
        })
    })
    .await;
    assert_eq!(sweep.cancelled_at_begin, 2 * AT_BEGIN_REPEATS, "every try was dropped mid-BEGIN: {sweep:?}");
    assert_eq!(sweep.poisoned(), 0, "{sweep:?}");
}
