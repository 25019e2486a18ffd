//! The SOS reference server: every crate composed into one axum service.
//!
//! A provider's webhook arrives, its signature is checked on the raw body (sos-webhooks), the
//! delivery is made idempotent by `WebhookGuard`, and its state change commits with its audit
//! entry (sos-audit) in one transaction. Each agent (sos-identity) evaluates its vertical pack's
//! ruliads (sos-ruliads) over the tenant's deals, contacts and messages; resonance routing picks
//! the agent that speaks a signal; its trust gate decides whether it may; released signals go out
//! through a `Channel` (a Slack/Discord incoming webhook, or the log) and each acknowledgement is
//! recorded as a receipt. People's feedback moves the gate. An auditor reads, verifies and proves
//! the chain over HTTP.
//!
//! Run it with `cargo run -p sos-server -- --demo` (see the README's quick start). It starts on
//! an embedded SQLite file (`sos-data/sos.sqlite`, created on first run) and moves to PostgreSQL
//! when `DATABASE_URL` is set. `GET /openapi.json` documents every route.
//!
//! The library exposes what `main` does, so tests and other processes run exactly the binary's
//! code: [`Config`] (clap) → [`Settings::load`] → [`App::open`] → [`serve_app`], or all of it
//! with [`serve`].
//!
//! # Examples
//!
//! The server in-process on a temporary SQLite file, as the tests run it:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir()?;
//! let sqlite = dir.path().join("sos.sqlite").display().to_string();
//! let key = dir.path().join("checkpoint.key").display().to_string();
//! let mut config =
//!     sos_server::Config::from_args(["sos-server", "--packs", "packs", "--sqlite-path", &sqlite, "--signing-key", &key])?;
//! config.database_url = None; // the SQLite file, even where DATABASE_URL is set
//! let settings = sos_server::Settings::load(config)?;
//! let app = sos_server::App::open(settings, std::sync::Arc::new(sos_core::SystemClock)).await?;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let base = format!("http://{}", listener.local_addr()?);
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(sos_server::serve_app(app, listener, async move {
//!     let _ = stopped.await;
//! }));
//!
//! let client = reqwest::Client::new();
//! let created = client.put(format!("{base}/v1/tenants/acme")).send().await?;
//! assert_eq!(created.status(), 201);
//! let unknown: serde_json::Value = client.get(format!("{base}/v1/tenants/globex/deals")).send().await?.json().await?;
//! assert_eq!(unknown["error"]["code"], "unknown_tenant");
//!
//! let _ = stop.send(());
//! server.await??; // in-flight requests finish first
//! # Ok::<(), anyhow::Error>(())
//! # }).unwrap();
//! ```

mod agents;
mod api;
mod audit;
mod channel;
mod config;
mod db;
mod demo;
mod error;
mod openapi;
mod signals;
mod state;
mod webhooks;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use sos_core::{Channel, Clock};

pub use agents::{AgentView, NewAgent, PackView, RegistryView, TrustView};
pub use api::{
    AgentList, EntryList, Health, RecordList, RecordView, SignalList, TenantView, VerifyView, router,
};
pub use audit::CheckpointView;
pub use channel::{LogChannel, SlackChannel, escape};
pub use config::{
    Config, DEMO_STANDARD_SECRET, DEMO_STRIPE_SECRET, DEMO_TENANT, ProviderKind, SIGNER_NAME, Settings,
    Verifier,
};
pub use db::{Database, migrators, postgres_migrators, sqlite_migrators};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use openapi::document as openapi_document;
pub use signals::{EvaluationReport, FeedbackAnswer, FeedbackRequest, SignalView, Verdict};
pub use webhooks::{Change, InboundEvent, WebhookAnswer};

/// The running server's shared parts; cheap to clone.
#[derive(Clone)]
pub struct App {
    pub(crate) settings: Settings,
    pub(crate) database: Database,
    pub(crate) chain: audit::Chain,
    pub(crate) checkpoints: audit::Checkpoints,
    pub(crate) guard: Arc<webhooks::Guard>,
    pub(crate) registry: agents::Registry,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) channel: Arc<dyn Channel>,
    pub(crate) tenant_channels: Arc<std::collections::BTreeMap<sos_core::TenantId, Arc<dyn Channel>>>,
    pub(crate) evaluating: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("database", &self.database.backend())
            .field("channel", &self.channel.name())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Opens the configured database (applying every crate's migrations), builds the channel and,
    /// with `--demo`, seeds the demo tenant. `clock` is the time everything runs on: the system
    /// clock in production, a `ManualClock` in tests that need days to pass.
    ///
    /// # Errors
    ///
    /// When the database cannot be opened or migrated, or seeding fails.
    pub async fn open(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let database =
            Database::open(settings.config.database_url.as_deref(), &settings.config.sqlite_path).await?;
        let channel: Arc<dyn Channel> = match &settings.slack_webhook_url {
            Some(url) => Arc::new(SlackChannel::new(url.clone())?),
            None => Arc::new(LogChannel),
        };
        let mut tenant_channels: std::collections::BTreeMap<sos_core::TenantId, Arc<dyn Channel>> =
            std::collections::BTreeMap::new();
        for (tenant, url) in settings.tenant_slack_webhook_urls.iter() {
            tenant_channels.insert(tenant.clone(), Arc::new(SlackChannel::new(url.clone())?));
        }
        audit::check_signing_key(&database, &settings.signer, &settings.config.signing_key).await?;
        let chain = audit::Chain::new(&database, Arc::clone(&clock));
        let app = Self {
            checkpoints: audit::Checkpoints::new(&chain, &settings.signer, Arc::clone(&clock))?,
            chain,
            guard: Arc::new(webhooks::Guard::new(&database, Arc::clone(&clock))),
            registry: agents::Registry::new(&database, Arc::clone(&clock)),
            settings,
            database,
            clock,
            channel,
            tenant_channels: Arc::new(tenant_channels),
            evaluating: Arc::new(tokio::sync::Mutex::new(())),
        };
        if app.settings.config.demo {
            demo::seed(&app)
                .await
                .map_err(|error| anyhow::anyhow!("seeding the demo tenant failed: {error:?}"))?;
        }
        Ok(app)
    }

    /// The channel a tenant's signals go through: its own Slack-compatible webhook, the default
    /// one, or the log.
    pub(crate) fn channel_for(&self, tenant: &sos_core::TenantId) -> &Arc<dyn Channel> {
        self.tenant_channels.get(tenant).unwrap_or(&self.channel)
    }

    /// The clock everything runs on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The database the server runs on.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Evaluates every tenant once (what the periodic evaluation does); returns how many
    /// signals were delivered.
    pub async fn evaluate_all(&self) -> usize {
        let tenants = match state::tenants(&self.database).await {
            Ok(tenants) => tenants,
            Err(error) => {
                tracing::warn!(code = error.code(), "cannot list tenants for the evaluation");
                return 0;
            }
        };
        let mut delivered = 0;
        for tenant in tenants {
            match signals::evaluate(self, &tenant).await {
                Ok(report) => {
                    delivered += report.delivered;
                    if report.fired > 0 || report.delivered > 0 {
                        tracing::info!(%tenant, fired = report.fired, released = report.released,
                            withheld = report.withheld, delivered = report.delivered, failed = report.failed, "evaluated");
                    }
                }
                Err(error) => {
                    tracing::warn!(%tenant, code = error.code(), "evaluation failed; the next run retries")
                }
            }
        }
        delivered
    }
}

/// Validates `config`, opens everything on the system clock and serves until `shutdown`
/// resolves: in-flight requests and a running evaluation finish first. This is what `main` does.
///
/// # Errors
///
/// When the configuration is invalid, or the database cannot be opened or migrated.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    let app = App::open(settings, Arc::new(sos_core::SystemClock)).await?;
    serve_app(app, listener, shutdown).await
}

/// Serves `app` on `listener` with the periodic evaluation (when configured) until `shutdown`
/// resolves, then lets in-flight requests and a running evaluation finish.
///
/// # Errors
///
/// When serving fails.
pub async fn serve_app(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let evaluator = app
        .settings
        .eval_interval()
        .map(|every| tokio::spawn(run_evaluator(app.clone(), every, stopped.clone())));
    let checkpointer = {
        let checkpoints = app.checkpoints.clone();
        let mut stopped = stopped;
        tokio::spawn(async move {
            checkpoints
                .run(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await;
        })
    };
    tracing::info!(
        address = %listener.local_addr()?,
        database = app.database.backend(),
        channel = app.channel.name(),
        verticals = ?app.settings.packs.keys().collect::<Vec<_>>(),
        "sos-server listening"
    );
    let app_evaluating = Arc::clone(&app.evaluating);
    let result = axum::serve(listener, router(app))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await;
    if let Some(evaluator) = evaluator {
        // The evaluator finishes the evaluation it is in, then stops.
        let _ = evaluator.await;
    }
    let _ = checkpointer.await;
    // An evaluation a webhook started is not cut off: wait for it, and let none start after.
    let _no_more_evaluations = app_evaluating.lock_owned().await;
    result?;
    Ok(())
}

async fn run_evaluator(app: App, every: Duration, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = interval.tick() => {
                // Not raced against shutdown: an evaluation in progress completes its writes.
                app.evaluate_all().await;
                match app.guard.purge().await {
                    Ok(0) => {}
                    Ok(purged) => tracing::info!(purged, "purged webhook dedupe records past their retention"),
                    Err(error) => tracing::warn!(%error, "purging webhook dedupe records failed; the next run retries"),
                }
            }
        }
    }
}
