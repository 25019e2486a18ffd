//! `sos-audit`: verify and export SOS audit chains; sign checkpoints and prove entries.
//!
//! Exit status: 0 when every chain is intact (or a proof verifies), 1 when tampering or forgery
//! is found, 2 for usage or I/O errors.

use std::io::{BufReader, BufWriter, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sos_audit::note::Checkpoint;
use sos_audit::tlog::{self, CheckpointFinding};
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
        /// A signed checkpoint held outside the log (repeatable): the chain must not be shorter
        /// (truncated) or have another root at its size (forked); two of one size with different
        /// roots are a split view. Needs --verifier-key.
        #[arg(long, requires = "verifier_key")]
        checkpoint: Vec<PathBuf>,
        /// The log's verifier key (a file, or the key string itself).
        #[arg(long)]
        verifier_key: Option<String>,
    },
    /// Generate a checkpoint signing key: writes the private key to a new file readable only by
    /// you, and prints the verifier key to publish.
    Keygen {
        /// The log's name, such as example.com/sos-audit (checkpoint origins are NAME/TENANT).
        #[arg(long)]
        name: String,
        /// Where to write the private key (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a checkpoint of each tenant's chain (or one) now, and print it.
    Checkpoint {
        /// A postgres:// or sqlite:// URL of the database holding the chains.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// The file holding the private signer key (from `sos-audit keygen`).
        #[arg(long)]
        signer_key: PathBuf,
        /// Checkpoint only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Also anchor each checkpoint as a write-once, read-only file under this directory.
        #[arg(long)]
        anchor_dir: Option<PathBuf>,
    },
    /// Print the inclusion proof of one entry against the latest (or a given) checkpoint, as JSON.
    Prove {
        /// A postgres:// or sqlite:// URL of the database holding the chains.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// The entry's tenant.
        #[arg(long)]
        tenant: String,
        /// The entry's sequence number.
        #[arg(long)]
        seq: u64,
        /// Prove against the recorded checkpoint of this size instead of the latest.
        #[arg(long)]
        size: Option<u64>,
    },
    /// Verify a proof printed by `sos-audit prove`, with the log's public key only.
    VerifyProof {
        /// The proof file (JSON).
        #[arg(long)]
        proof: PathBuf,
        /// The log's verifier key (a file, or the key string itself).
        #[arg(long)]
        verifier_key: String,
        /// Verify against this signed checkpoint (one you kept) instead of the one in the proof.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// A JSONL line of the entry (from `sos-audit export`): its hash must be the proven leaf.
        #[arg(long)]
        entry: Option<PathBuf>,
    },
    /// Write a tenant's tree and entries at its latest checkpoint as C2SP tlog-tiles files.
    Tiles {
        /// A postgres:// or sqlite:// URL of the database holding the chains.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The directory to write (`checkpoint`, `tile/…`).
        #[arg(long)]
        out: PathBuf,
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
        Command::Verify { database_url, tenant, file, expect_head, checkpoint, verifier_key } => {
            let expect_head = expect_head.map(|head| head.parse::<ChainHead>()).transpose()?;
            let tenant = tenant.map(TenantId::new).transpose()?;
            if !checkpoint.is_empty() {
                let Some(key) = verifier_key else { bail!("--checkpoint needs --verifier-key") };
                let (checkpoint_tenant, checkpoints) = open_checkpoints(&checkpoint, &key)?;
                if let Some(given) = &tenant
                    && given != &checkpoint_tenant
                {
                    bail!("the checkpoints are of tenant {checkpoint_tenant}, not {given}");
                }
                return verify_with_checkpoints(
                    database_url,
                    file,
                    checkpoint_tenant,
                    expect_head,
                    &checkpoints,
                )
                .await;
            }
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
            match connect(&url, true).await? {
                Store::Postgres(store) => verify_database(&store, tenant, expect_head).await,
                Store::Sqlite(store) => verify_database(&store, tenant, expect_head).await,
            }
        }
        Command::Export { database_url, tenant } => {
            let tenant = TenantId::new(tenant)?;
            match connect(&database_url, true).await? {
                Store::Postgres(store) => export(&store, &tenant).await?,
                Store::Sqlite(store) => export(&store, &tenant).await?,
            }
            Ok(true)
        }
        Command::Keygen { name, out } => {
            let signer = tlog::generate_signer_file(&out, &name)?;
            println!("{}", signer.verifier().to_key_string());
            eprintln!(
                "private key written to {}; keep it out of the database and its backups",
                out.display()
            );
            Ok(true)
        }
        Command::Checkpoint { database_url, signer_key, tenant, anchor_dir } => {
            let signer = tlog::load_signer(&signer_key)?;
            let tenant = tenant.map(TenantId::new).transpose()?;
            match connect(&database_url, false).await? {
                Store::Postgres(store) => checkpoint(store, signer, tenant, anchor_dir).await,
                Store::Sqlite(store) => checkpoint(store, signer, tenant, anchor_dir).await,
            }
        }
        Command::Prove { database_url, tenant, seq, size } => {
            let tenant = TenantId::new(tenant)?;
            let proof = match connect(&database_url, true).await? {
                Store::Postgres(store) => tlog::prove(&store, &tenant, seq, size).await?,
                Store::Sqlite(store) => tlog::prove(&store, &tenant, seq, size).await?,
            };
            println!("{}", serde_json::to_string_pretty(&proof)?);
            Ok(true)
        }
        Command::VerifyProof { proof, verifier_key, checkpoint, entry } => {
            verify_proof(&proof, &verifier_key, checkpoint.as_deref(), entry.as_deref())
        }
        Command::Tiles { database_url, tenant, out } => {
            let tenant = TenantId::new(tenant)?;
            let exported = match connect(&database_url, true).await? {
                Store::Postgres(store) => tlog::export_tiles(&store, &tenant, &out).await?,
                Store::Sqlite(store) => tlog::export_tiles(&store, &tenant, &out).await?,
            };
            println!("wrote the tiles of tenant {tenant} at size {} to {}", exported.size(), out.display());
            Ok(true)
        }
    }
}

/// Opens checkpoint files with the verifier key; all must be of one tenant (`<key name>/<tenant>`).
fn open_checkpoints(paths: &[PathBuf], key: &str) -> anyhow::Result<(TenantId, Vec<Checkpoint>)> {
    let verifier = tlog::load_verifier(key)?;
    let prefix = format!("{}/", verifier.name());
    let mut tenant: Option<TenantId> = None;
    let mut checkpoints = Vec::new();
    for path in paths {
        let bytes = read_limited(path, sos_audit::note::MAX_NOTE_BYTES)?;
        let note = sos_audit::note::open_note(&bytes, std::slice::from_ref(&verifier))
            .with_context(|| format!("checkpoint {} is not signed by the log's key", path.display()))?;
        let checkpoint = Checkpoint::parse(&note.text)
            .with_context(|| format!("checkpoint {} is malformed", path.display()))?;
        let named =
            checkpoint.origin.strip_prefix(&prefix).and_then(|rest| TenantId::new(rest).ok()).with_context(
                || {
                    format!(
                        "checkpoint {} has origin {:?}, not {prefix}<tenant>",
                        path.display(),
                        checkpoint.origin
                    )
                },
            )?;
        if let Some(seen) = &tenant
            && seen != &named
        {
            bail!("the checkpoints name two tenants, {seen} and {named}; verify one tenant at a time");
        }
        tenant = Some(named);
        checkpoints.push(checkpoint);
    }
    let tenant = tenant.context("give at least one --checkpoint")?;
    Ok((tenant, checkpoints))
}

async fn verify_with_checkpoints(
    database_url: Option<String>,
    file: Option<PathBuf>,
    tenant: TenantId,
    expect_head: Option<ChainHead>,
    checkpoints: &[Checkpoint],
) -> anyhow::Result<bool> {
    let (chain_intact, findings) = if let Some(path) = file {
        let open = || std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()));
        let verdict = verify_jsonl(BufReader::new(open()?), expect_head, |_| {})
            .with_context(|| format!("cannot read {}", path.display()))?;
        let chain_tenant = match &verdict {
            Verdict::Intact(chain) => chain.tenant.clone(),
            Verdict::Tampered { tenant, .. } => tenant.clone(),
        };
        if let Some(chain_tenant) = &chain_tenant
            && chain_tenant != &tenant
        {
            bail!("the chain file is tenant {chain_tenant}'s, the checkpoints are tenant {tenant}'s");
        }
        let intact = report(&verdict, &format!("{} (tenant {tenant})", path.display()));
        let findings = tlog::verify_checkpoints_jsonl(BufReader::new(open()?), checkpoints)
            .with_context(|| format!("cannot read {}", path.display()))?;
        (intact, findings)
    } else {
        let Some(url) = database_url else { bail!("give --database-url URL or --file PATH") };
        match connect(&url, true).await? {
            Store::Postgres(store) => {
                let intact = verify_database(&store, Some(tenant.clone()), expect_head).await?;
                (intact, tlog::verify_checkpoints(&store, &tenant, checkpoints).await?)
            }
            Store::Sqlite(store) => {
                let intact = verify_database(&store, Some(tenant.clone()), expect_head).await?;
                (intact, tlog::verify_checkpoints(&store, &tenant, checkpoints).await?)
            }
        }
    };
    for finding in &findings {
        let label =
            if matches!(finding, CheckpointFinding::SplitView { .. }) { "SPLIT VIEW" } else { "TAMPERED" };
        println!("{label}: tenant {tenant}: {finding}");
    }
    if findings.is_empty() {
        for checkpoint in checkpoints {
            println!(
                "checkpoint matches: tenant {tenant}: size {} root {}",
                checkpoint.size, checkpoint.root
            );
        }
    }
    Ok(chain_intact && findings.is_empty())
}

async fn checkpoint<S: tlog::MerkleStore>(
    store: S,
    signer: sos_audit::note::NoteSigner,
    tenant: Option<TenantId>,
    anchor_dir: Option<PathBuf>,
) -> anyhow::Result<bool> {
    let mut checkpointer = tlog::Checkpointer::new(store, signer);
    if let Some(dir) = anchor_dir {
        checkpointer = checkpointer.with_anchor(std::sync::Arc::new(tlog::FsAnchorSink::new(dir)));
    }
    let tenants = match tenant {
        Some(tenant) => vec![tenant],
        None => checkpointer.store().tenants().await?,
    };
    let mut all_signed = true;
    for tenant in &tenants {
        match checkpointer.checkpoint_now(tenant).await {
            Ok(signed) => print!("{}", signed.note),
            Err(
                error @ (sos_audit::Error::SplitView { .. }
                | sos_audit::Error::Forked { .. }
                | sos_audit::Error::RewrittenTree { .. }
                | sos_audit::Error::ChainBroken { .. }
                | sos_audit::Error::AnchorConflict { .. }),
            ) => {
                println!("REFUSED: tenant {tenant}: {error}");
                all_signed = false;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(all_signed)
}

/// Reads at most `limit` bytes of `path`: a larger file (or an endless one such as `/dev/zero`)
/// is refused instead of read into memory.
fn read_limited(path: &std::path::Path, limit: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    file.take(cap).read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() > limit {
        bail!("{} is larger than {limit} bytes: it is not what this command reads", path.display());
    }
    Ok(bytes)
}

/// Reads the first line of `path`, at most [`sos_audit::MAX_LINE_LEN`] bytes of it.
fn read_first_line(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::{BufRead as _, Read as _};
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cap = u64::try_from(sos_audit::MAX_LINE_LEN).unwrap_or(u64::MAX).saturating_add(1);
    let mut line = Vec::new();
    BufReader::new(file.take(cap))
        .read_until(b'\n', &mut line)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if line.len() > sos_audit::MAX_LINE_LEN {
        bail!(
            "the first line of {} is longer than {} bytes: it is not an entry",
            path.display(),
            sos_audit::MAX_LINE_LEN
        );
    }
    Ok(line)
}

fn verify_proof(
    proof_path: &std::path::Path,
    key: &str,
    checkpoint_path: Option<&std::path::Path>,
    entry_path: Option<&std::path::Path>,
) -> anyhow::Result<bool> {
    let verifier = tlog::load_verifier(key)?;
    let bytes = read_limited(proof_path, tlog::MAX_PROOF_JSON_BYTES)?;
    let proof = tlog::EntryProof::from_json(&bytes)
        .with_context(|| format!("{} is not a proof", proof_path.display()))?;
    if let Some(entry_path) = entry_path {
        let line = read_first_line(entry_path)?;
        let first = line.split(|&byte| byte == b'\n').next().unwrap_or_default();
        let entry = sos_audit::parse_jsonl_line(first, 1)?;
        if entry.compute_hash()? != entry.hash {
            println!(
                "FAILED: the entry in {} does not match its own hash (it was edited)",
                entry_path.display()
            );
            return Ok(false);
        }
        if entry.tenant != proof.tenant || entry.seq != proof.seq || entry.hash != proof.entry_hash {
            println!(
                "FAILED: the entry in {} is tenant {} seq {} with hash {}, the proof is for tenant {} seq {} with hash {}",
                entry_path.display(),
                entry.tenant,
                entry.seq,
                entry.hash,
                proof.tenant,
                proof.seq,
                proof.entry_hash
            );
            return Ok(false);
        }
    }
    let outcome = match checkpoint_path {
        Some(path) => {
            let note = read_limited(path, sos_audit::note::MAX_NOTE_BYTES)?;
            let origin = tlog::origin_for(verifier.name(), &proof.tenant);
            Checkpoint::open(&note, &verifier, &origin)
                .map_err(sos_audit::Error::from)
                .and_then(|checkpoint| proof.verify_against(&checkpoint).map(|()| checkpoint))
        }
        None => proof.verify(&verifier),
    };
    match outcome {
        Ok(checkpoint) => {
            println!(
                "verified: tenant {} entry {} (hash {}) is in the log of size {} with root {}",
                proof.tenant, proof.seq, proof.entry_hash, checkpoint.size, checkpoint.root
            );
            Ok(true)
        }
        Err(error) => {
            println!("FAILED: {error}");
            Ok(false)
        }
    }
}

enum Store {
    Postgres(PgAuditChain),
    Sqlite(SqliteAuditChain),
}

async fn connect(url: &str, read_only: bool) -> anyhow::Result<Store> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .context("cannot connect to PostgreSQL")?;
        Ok(Store::Postgres(PgAuditChain::new(pool)))
    } else if url.starts_with("sqlite:") {
        let options = url
            .parse::<sqlx::sqlite::SqliteConnectOptions>()
            .context("invalid sqlite URL")?
            .read_only(read_only);
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
