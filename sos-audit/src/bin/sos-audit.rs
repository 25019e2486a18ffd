//! `sos-audit`: verify and export SOS audit chains.
//!
//! Exit status: 0 when every chain is intact, 1 when tampering is found, 2 for usage or I/O errors.

use std::io::{BufReader, BufWriter, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sos_audit::{
    AuditStore, ChainHead, PAGE_SIZE, PgAuditChain, SqliteAuditChain, Verdict, verify_jsonl, verify_store,
    write_jsonl_line,
};
use sos_core::TenantId;

/// Verify and export SOS audit chains.
#[derive(Debug, Parser)]
#[command(name = "sos-audit", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify chains in a database (every tenant, or one) or in a JSONL file.
    Verify {
        /// A postgres:// or sqlite:// URL of the database holding the chains (ignored with --file).
        #[arg(long, env = "DATABASE_URL", required_unless_present = "file")]
        database_url: Option<String>,
        /// Verify only this tenant's chain.
        #[arg(long, conflicts_with = "file")]
        tenant: Option<String>,
        /// A JSONL file written by `sos-audit export`.
        #[arg(long)]
        file: Option<PathBuf>,
        /// A head recorded elsewhere (SEQ:HASH): the chain must reach it, with that hash.
        #[arg(long)]
        expect_head: Option<String>,
    },
    /// Write one tenant's chain as JSONL to standard output.
    Export {
        /// A postgres:// or sqlite:// URL of the database holding the chains.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// The tenant whose chain to export.
        #[arg(long)]
        tenant: String,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether everything verified.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Verify { database_url, tenant, file, expect_head } => {
            let expect_head = expect_head.map(|head| head.parse::<ChainHead>()).transpose()?;
            let tenant = tenant.map(TenantId::new).transpose()?;
            if let Some(path) = file {
                let opened =
                    std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
                let bar = progress_bar();
                let verdict =
                    verify_jsonl(BufReader::new(opened), expect_head, |checked| bar.set_position(checked))
                        .with_context(|| format!("cannot read {}", path.display()))?;
                bar.finish_and_clear();
                let tenant = match &verdict {
                    Verdict::Intact(chain) => chain.tenant.clone(),
                    Verdict::Tampered { tenant, .. } => tenant.clone(),
                };
                let what = match tenant {
                    Some(tenant) => format!("{} (tenant {tenant})", path.display()),
                    None => path.display().to_string(),
                };
                return Ok(report(&verdict, &what));
            }
            let Some(url) = database_url else { bail!("give --database-url URL or --file PATH") };
            if expect_head.is_some() && tenant.is_none() {
                bail!("--expect-head needs --tenant: a head belongs to one tenant's chain");
            }
            match connect(&url).await? {
                Store::Postgres(store) => verify_database(&store, tenant, expect_head).await,
                Store::Sqlite(store) => verify_database(&store, tenant, expect_head).await,
            }
        }
        Command::Export { database_url, tenant } => {
            let tenant = TenantId::new(tenant)?;
            match connect(&database_url).await? {
                Store::Postgres(store) => export(&store, &tenant).await?,
                Store::Sqlite(store) => export(&store, &tenant).await?,
            }
            Ok(true)
        }
    }
}

enum Store {
    Postgres(PgAuditChain),
    Sqlite(SqliteAuditChain),
}

async fn connect(url: &str) -> anyhow::Result<Store> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .context("cannot connect to PostgreSQL")?;
        Ok(Store::Postgres(PgAuditChain::new(pool)))
    } else if url.starts_with("sqlite:") {
        let options =
            url.parse::<sqlx::sqlite::SqliteConnectOptions>().context("invalid sqlite URL")?.read_only(true);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .context("cannot open the SQLite database")?;
        Ok(Store::Sqlite(SqliteAuditChain::new(pool)))
    } else {
        bail!("unsupported database URL: use postgres://… or sqlite://…")
    }
}

async fn verify_database<S: AuditStore>(
    store: &S,
    tenant: Option<TenantId>,
    expect_head: Option<ChainHead>,
) -> anyhow::Result<bool> {
    let tenants = match tenant {
        Some(tenant) => vec![tenant],
        None => match store.tenants().await {
            Ok(tenants) => tenants,
            // A row naming an invalid tenant id is evidence of tampering, not an I/O error.
            Err(error @ sos_audit::Error::CorruptEntry { .. }) => {
                println!("TAMPERED: {error}");
                return Ok(false);
            }
            Err(error) => return Err(error.into()),
        },
    };
    let mut all_intact = true;
    for tenant in &tenants {
        let bar = progress_bar();
        bar.set_message(tenant.to_string());
        let verdict = verify_store(store, tenant, expect_head, |checked| bar.set_position(checked)).await?;
        bar.finish_and_clear();
        all_intact &= report(&verdict, &format!("tenant {tenant}"));
    }
    if tenants.is_empty() {
        println!("intact: no chains in the database");
    }
    Ok(all_intact)
}

fn report(verdict: &Verdict, what: &str) -> bool {
    match verdict {
        Verdict::Intact(chain) => {
            let head = chain.head.map_or_else(|| "empty".to_owned(), |head| head.to_string());
            println!("intact: {what}: {} entries, head {head}", chain.entries);
            true
        }
        Verdict::Tampered { finding, entries_checked, .. } => {
            println!(
                "TAMPERED: {what}: first bad entry at seq {}: {finding} ({entries_checked} entries verified before it)",
                finding.position()
            );
            false
        }
    }
}

async fn export<S: AuditStore>(store: &S, tenant: &TenantId) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut after = 0;
    loop {
        let page = store.read_page(tenant, after, PAGE_SIZE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for entry in &page {
            write_jsonl_line(&mut out, entry)?;
        }
        if page.len() < PAGE_SIZE as usize {
            break;
        }
    }
    out.flush()?;
    Ok(())
}

fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {pos} entries verified ({per_sec})") {
        bar.set_style(style);
    }
    bar
}
