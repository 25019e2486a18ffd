//! Start-up configuration, from flags and environment, validated once at start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use sos_audit::note::NoteSigner;
use sos_core::TenantId;
use sos_ruliads::pack::Pack;
use sos_webhooks::signature::{StandardWebhooksVerifier, StripeVerifier};

/// The secret the `--demo` tenant's webhooks are signed with when no secret is configured for it.
///
/// It is printed in the README's quick start and only ever applies to the tenant `demo`.
pub const DEMO_STRIPE_SECRET: &str = "whsec_demo_stripe_secret_for_the_quick_start";
/// The Standard Webhooks secret of the `--demo` tenant when none is configured (`whsec_` and
/// base64 of `sos-demo-standard-webhooks-secret`).
pub const DEMO_STANDARD_SECRET: &str = "whsec_c29zLWRlbW8tc3RhbmRhcmQtd2ViaG9va3Mtc2VjcmV0";
/// The name of the checkpoint signing key; a tenant's checkpoints have the origin
/// `sos-server/<tenant>`.
pub const SIGNER_NAME: &str = "sos-server";
/// The tenant `--demo` seeds.
pub const DEMO_TENANT: &str = "demo";

/// How the reference server is configured. Every flag also reads an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "sos-server", version, about = "The SOS reference server")]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "SOS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// PostgreSQL URL; when set, the server uses PostgreSQL instead of the embedded SQLite file.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// The embedded SQLite database file, created on first run (ignored when DATABASE_URL is set).
    #[arg(long, env = "SOS_SQLITE_PATH", default_value = "sos-data/sos.sqlite")]
    pub sqlite_path: PathBuf,

    /// The vertical packs directory (`<dir>/<vertical>/seed.json`), loaded and validated once.
    #[arg(long, env = "SOS_PACKS", default_value = "examples/packs")]
    pub packs: PathBuf,

    /// The checkpoint signing key file; generated on first run (with a warning) when absent. Its
    /// verifier key is written beside it as `<file>.pub`. The server refuses to start when the
    /// database holds checkpoints this key did not sign (restore the key, or move them aside).
    #[arg(long, env = "SOS_SIGNING_KEY", default_value = "sos-data/checkpoint.key")]
    pub signing_key: PathBuf,

    /// A webhook secret, `TENANT:PROVIDER=SECRET` (provider `stripe` or `standard`); repeat it,
    /// or give several comma-separated in the environment. Several secrets for one tenant and
    /// provider are all accepted (rotation).
    #[arg(long = "webhook-secret", env = "SOS_WEBHOOK_SECRETS", value_delimiter = ',')]
    pub webhook_secrets: Vec<String>,

    /// A Slack-compatible incoming-webhook URL signals are posted to (Discord accepts the same
    /// payload at its `/slack` URL): `URL` for every tenant, or `TENANT=URL` for one tenant;
    /// repeat it, or give several comma-separated in the environment. A tenant without a URL
    /// gets the log.
    #[arg(long = "slack-webhook-url", env = "SOS_SLACK_WEBHOOK_URL", value_delimiter = ',')]
    pub slack_webhook_urls: Vec<String>,

    /// Seconds between periodic evaluations of every tenant's agents (0 turns them off).
    #[arg(long, env = "SOS_EVAL_INTERVAL", default_value_t = 30)]
    pub eval_interval: u64,

    /// Seed the tenant `demo` with a planted agent, its history and a few deals, so that a
    /// first signal arrives within a minute.
    #[arg(long, env = "SOS_DEMO")]
    pub demo: bool,

    /// The largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, env = "SOS_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
}

impl Config {
    /// Parses flags (the first item is the program name) and the environment, as `main` does;
    /// the same as `clap::Parser::try_parse_from`, without needing clap in scope.
    ///
    /// # Errors
    ///
    /// clap's error, which prints the usage.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        <Self as clap::Parser>::try_parse_from(args)
    }
}

/// A webhook provider the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProviderKind {
    /// Stripe (`Stripe-Signature`).
    Stripe,
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    Standard,
}

impl ProviderKind {
    /// Parses a provider name as it appears in URLs and configuration.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "stripe" => Some(Self::Stripe),
            "standard" => Some(Self::Standard),
            _ => None,
        }
    }

    /// The name in URLs and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::Standard => "standard",
        }
    }
}

/// A ready signature verifier for one tenant and provider.
#[derive(Debug, Clone)]
pub enum Verifier {
    /// Stripe.
    Stripe(StripeVerifier),
    /// Standard Webhooks.
    Standard(StandardWebhooksVerifier),
}

/// Everything the configuration names, loaded and checked: what the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The flags and environment it came from.
    pub config: Config,
    /// The packs, by vertical name.
    pub packs: Arc<BTreeMap<String, Arc<Pack>>>,
    /// The checkpoint signer.
    pub signer: Arc<NoteSigner>,
    /// Signature verifiers by (tenant, provider).
    pub verifiers: Arc<BTreeMap<(TenantId, ProviderKind), Verifier>>,
    /// The Slack-compatible incoming webhook for every tenant without its own, when configured.
    pub slack_webhook_url: Option<reqwest::Url>,
    /// Tenants' own Slack-compatible incoming webhooks.
    pub tenant_slack_webhook_urls: Arc<BTreeMap<TenantId, reqwest::Url>>,
}

impl Settings {
    /// Validates `config`, loads the packs and the signing key (creating it when absent) and
    /// builds the webhook verifiers.
    ///
    /// # Errors
    ///
    /// A message naming the flag and what to do, for every invalid value.
    pub fn load(config: Config) -> anyhow::Result<Self> {
        if config.max_body_bytes < 1024 {
            bail!("--max-body-bytes {} is too small; give at least 1024", config.max_body_bytes);
        }
        if let Some(url) = &config.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            bail!(
                "--database-url / DATABASE_URL {url:?} is not a postgres:// URL; unset it to use the embedded SQLite file"
            );
        }
        let packs = load_packs(&config.packs)?;
        let signer = load_or_create_signer(&config.signing_key)?;
        publish_verifier(&config.signing_key, &signer)?;
        let verifiers = build_verifiers(&config)?;
        let (slack_webhook_url, tenant_slack_webhook_urls) = channel_urls(&config.slack_webhook_urls)?;
        Ok(Self {
            config,
            packs: Arc::new(packs),
            signer: Arc::new(signer),
            verifiers: Arc::new(verifiers),
            slack_webhook_url,
            tenant_slack_webhook_urls: Arc::new(tenant_slack_webhook_urls),
        })
    }

    /// The evaluation interval, `None` when periodic evaluation is off.
    pub fn eval_interval(&self) -> Option<Duration> {
        (self.config.eval_interval > 0).then(|| Duration::from_secs(self.config.eval_interval))
    }
}

type ChannelUrls = (Option<reqwest::Url>, BTreeMap<TenantId, reqwest::Url>);

/// Splits `--slack-webhook-url` items into the default URL and tenants' own.
fn channel_urls(items: &[String]) -> anyhow::Result<ChannelUrls> {
    let mut default = None;
    let mut tenants = BTreeMap::new();
    for item in items.iter().map(|item| item.trim()).filter(|item| !item.is_empty()) {
        // `TENANT=URL` when what precedes the first '=' is a tenant id and no scheme: a bare URL
        // may itself hold '=' in its query.
        let (tenant, text) = match item.split_once('=') {
            Some((tenant, url)) if !tenant.contains(':') => {
                let tenant: TenantId = tenant.parse().with_context(|| {
                    format!(
                        "--slack-webhook-url {item:?}: {tenant:?} is not a tenant id (use URL or TENANT=URL)"
                    )
                })?;
                (Some(tenant), url)
            }
            _ => (None, item),
        };
        let url = reqwest::Url::parse(text)
            .with_context(|| format!("--slack-webhook-url / SOS_SLACK_WEBHOOK_URL {text:?} is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("--slack-webhook-url {text:?} must be an http:// or https:// URL");
        }
        let previous = match tenant {
            Some(tenant) => tenants.insert(tenant, url),
            None => default.replace(url),
        };
        if previous.is_some() {
            bail!("--slack-webhook-url {item:?}: a URL for the same tenant (or for all) was already given");
        }
    }
    Ok((default, tenants))
}

fn load_packs(dir: &Path) -> anyhow::Result<BTreeMap<String, Arc<Pack>>> {
    if !dir.is_dir() {
        bail!(
            "the packs directory {} does not exist; run from the repository root or give --packs / SOS_PACKS \
             (a directory of <vertical>/seed.json, such as examples/packs)",
            dir.display()
        );
    }
    let packs = Pack::load_dir(dir).with_context(|| format!("cannot load the packs in {}", dir.display()))?;
    if packs.is_empty() {
        bail!(
            "the packs directory {} holds no <vertical>/seed.json; add one or point --packs elsewhere",
            dir.display()
        );
    }
    Ok(packs.into_iter().map(|pack| (pack.vertical().to_owned(), Arc::new(pack))).collect())
}

fn load_or_create_signer(path: &Path) -> anyhow::Result<NoteSigner> {
    if path.exists() {
        return sos_audit::tlog::load_signer(path).with_context(|| {
            format!(
                "the checkpoint signing key {} cannot be used; restore it from backup, or move it away to \
                 generate a new one (checkpoints signed before then only verify with the old key)",
                path.display()
            )
        });
    }
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    // Several replicas may start together on one key path: the key is written to a private
    // temporary file and hard-linked into place, which fails when the path exists, so exactly
    // one replica's key appears, complete, and the others load it (named shape `toctou-dedupe`).
    let temporary = temporary_beside(path);
    let signer = sos_audit::tlog::generate_signer_file(&temporary, SIGNER_NAME)
        .with_context(|| format!("cannot create the checkpoint signing key {}", temporary.display()))?;
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            tracing::info!(path = %path.display(), "another process created the checkpoint signing key first; using it");
            return sos_audit::tlog::load_signer(path)
                .with_context(|| format!("the checkpoint signing key {} cannot be used", path.display()));
        }
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot create the checkpoint signing key {}", path.display()));
        }
    }
    tracing::warn!(
        path = %path.display(),
        verifier_key = %signer.verifier().to_key_string(),
        "generated a new checkpoint signing key; back it up: checkpoints signed with it only verify with its verifier key"
    );
    Ok(signer)
}

/// A fresh temporary path beside `path`, unique to this process and call.
fn temporary_beside(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.{count}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    temporary
}

/// Writes the verifier key beside the signing key (`<key>.pub`) when it is not there, so an
/// auditor's tools (`sos-audit verify-proof --verifier-key …`) can be pointed at it. Like the key,
/// it appears complete or not at all.
fn publish_verifier(path: &Path, signer: &NoteSigner) -> anyhow::Result<()> {
    let mut public = path.as_os_str().to_owned();
    public.push(".pub");
    let public = PathBuf::from(public);
    if public.exists() {
        return Ok(());
    }
    let temporary = temporary_beside(&public);
    std::fs::write(&temporary, format!("{}\n", signer.verifier().to_key_string()))
        .with_context(|| format!("cannot write the verifier key to {}", temporary.display()))?;
    let linked = std::fs::hard_link(&temporary, &public);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => {
            Err(error).with_context(|| format!("cannot write the verifier key to {}", public.display()))
        }
    }
}

fn build_verifiers(config: &Config) -> anyhow::Result<BTreeMap<(TenantId, ProviderKind), Verifier>> {
    let mut secrets: BTreeMap<(TenantId, ProviderKind), Vec<String>> = BTreeMap::new();
    for item in config.webhook_secrets.iter().map(|item| item.trim()).filter(|item| !item.is_empty()) {
        let Some((target, secret)) = item.split_once('=') else {
            bail!("--webhook-secret {:?} is not TENANT:PROVIDER=SECRET", redact(item));
        };
        let Some((tenant, provider)) = target.split_once(':') else {
            bail!("--webhook-secret {:?} is not TENANT:PROVIDER=SECRET (the ':' is missing)", redact(item));
        };
        let tenant: TenantId = tenant
            .parse()
            .with_context(|| format!("--webhook-secret for {target:?}: the tenant id is invalid"))?;
        let Some(provider) = ProviderKind::parse(provider) else {
            bail!("--webhook-secret for {target:?}: unknown provider {provider:?}; use stripe or standard");
        };
        secrets.entry((tenant, provider)).or_default().push(secret.to_owned());
    }
    if config.demo {
        let demo: TenantId = DEMO_TENANT.parse().context("the demo tenant id")?;
        for (provider, secret) in
            [(ProviderKind::Stripe, DEMO_STRIPE_SECRET), (ProviderKind::Standard, DEMO_STANDARD_SECRET)]
        {
            secrets.entry((demo.clone(), provider)).or_insert_with(|| vec![secret.to_owned()]);
        }
    }
    let mut verifiers = BTreeMap::new();
    for ((tenant, provider), list) in secrets {
        let verifier = match provider {
            ProviderKind::Stripe => StripeVerifier::new(&list).map(Verifier::Stripe),
            ProviderKind::Standard => StandardWebhooksVerifier::new(&list).map(Verifier::Standard),
        }
        .with_context(|| format!("--webhook-secret for {tenant}:{}", provider.as_str()))?;
        verifiers.insert((tenant, provider), verifier);
    }
    Ok(verifiers)
}

/// The item with its secret replaced, for error messages.
fn redact(item: &str) -> String {
    match item.split_once('=') {
        Some((target, _)) => format!("{target}=…"),
        None => "…".to_owned(),
    }
}
