//! Real `sos-server` processes for tests: start, wait for `/healthz`, kill, restart, clean up.
//!
//! The test binary re-executes itself (`--exact server_process::child_entry`) with the server's
//! arguments in [`CHILD_ARGS`]; the child parses them with `sos_server::Config::try_parse_from`,
//! binds the listener and calls `sos_server::serve`, exactly as the binary's `main` does. So a
//! child behaves like the binary without `-p sos-tests` having to build another package's bin.
//!
//! No orphan survives a test: [`ServerProcess`] kills and reaps its child when dropped (also
//! while a failing test unwinds, when it also prints the tail of the child's log), and every
//! child watches its standard input, which only the parent holds: when the parent dies, even by
//! SIGKILL, the pipe closes and the child shuts down by itself.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The environment variable carrying the child server's arguments, as a JSON array of strings.
pub(crate) const CHILD_ARGS: &str = "SOS_TEST_CHILD_SERVER_ARGS";
/// The wall-clock instant (Unix milliseconds) at which a child starts the server, so that
/// several children really race (on migrations, on their first requests) instead of starting
/// one after the other.
const CHILD_START: &str = "SOS_TEST_CHILD_START_UNIX_MS";
/// Printed on the child's stdout with the bound address once the listener is bound.
const LISTENING: &str = "SOS_TEST_CHILD_LISTENING";
/// The exact name of the child entry test.
const CHILD_TEST: &str = "server_process::child_entry";
/// How long a child may take from spawn to a healthy `/healthz` (a loaded 2-core machine
/// compiling other crates at the same time can be very slow).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The configuration of one server: the binary's own flags, and environment variables for the
/// settings every server needs (the server reads each flag from its variable too).
#[derive(Debug, Clone)]
pub(crate) struct ServerArgs {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    dir: PathBuf,
}

/// The repository's vertical packs directory.
pub(crate) fn packs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/packs")
}

impl ServerArgs {
    /// A server whose working directory and files (checkpoint key) are in `dir`, with the
    /// repository's packs.
    fn in_dir(dir: &Path, args: Vec<String>) -> Self {
        let envs = vec![
            ("SOS_PACKS".to_owned(), packs_dir().display().to_string()),
            ("SOS_SIGNING_KEY".to_owned(), dir.join("checkpoint.key").display().to_string()),
        ];
        Self { args, envs, dir: dir.to_owned() }
    }

    /// A server on the SQLite file `<dir>/sos.sqlite`.
    pub(crate) fn sqlite(dir: &Path) -> Self {
        Self::in_dir(dir, vec!["--sqlite-path".to_owned(), dir.join("sos.sqlite").display().to_string()])
    }

    /// A server on the PostgreSQL database at `url`, its own files in `dir`.
    pub(crate) fn postgres(dir: &Path, url: &str) -> Self {
        Self::in_dir(dir, vec!["--database-url".to_owned(), url.to_owned()])
    }

    /// The SQLite file of a server made by [`ServerArgs::sqlite`].
    pub(crate) fn sqlite_path(&self) -> PathBuf {
        self.dir.join("sos.sqlite")
    }

    /// Adds `--flag value`.
    pub(crate) fn arg(mut self, flag: &str, value: impl Into<String>) -> Self {
        self.args.push(flag.to_owned());
        self.args.push(value.into());
        self
    }

    /// Adds a flag without a value.
    pub(crate) fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.to_owned());
        self
    }

    fn with_listen(&self, listen: &str) -> Vec<String> {
        let mut args = self.args.clone();
        args.push("--listen".to_owned());
        args.push(listen.to_owned());
        args
    }
}

/// A unique directory for a test's logs, SQLite files and keys, removed when dropped.
pub(crate) fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("sos-server-test-").tempdir().expect("a temporary directory")
}

/// A running child server.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    name: String,
    args: ServerArgs,
    log: PathBuf,
    address: SocketAddr,
    child: Option<Running>,
}

#[derive(Debug)]
struct Running {
    child: Child,
    // Held only so that the child sees EOF on its standard input when this process goes away.
    _stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

/// A child that was spawned and has not yet answered `/healthz`.
#[derive(Debug)]
pub(crate) struct Starting {
    name: String,
    args: ServerArgs,
    log: PathBuf,
    running: Running,
}

/// A start instant `lead` ahead of now, for [`ServerProcess::spawn_at`].
pub(crate) fn shared_start_in(lead: Duration) -> u128 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970");
    (now + lead).as_millis()
}

impl ServerProcess {
    /// Starts a server named `name` (for logs) and waits until its `/healthz` answers 200.
    /// Its log (stderr) goes to `<log_dir>/<name>.log`.
    pub(crate) async fn start(name: &str, log_dir: &Path, args: ServerArgs) -> Self {
        Self::spawn_at(name, log_dir, args, None).ready().await
    }

    /// Starts several servers that all begin at one shared instant, and waits for every one.
    pub(crate) async fn start_together(log_dir: &Path, servers: Vec<(String, ServerArgs)>) -> Vec<Self> {
        // Spawning a process is fast, loading the test binary under load is not: leave every
        // child time to reach the start line before the shared instant.
        let start = shared_start_in(Duration::from_millis(1500 + 500 * servers.len() as u64));
        let starting: Vec<Starting> = servers
            .into_iter()
            .map(|(name, args)| Self::spawn_at(&name, log_dir, args, Some(start)))
            .collect();
        let mut ready = Vec::with_capacity(starting.len());
        for child in starting {
            ready.push(child.ready().await);
        }
        ready
    }

    /// Spawns a child server listening on an ephemeral loopback port, starting at `start_at`
    /// (Unix milliseconds) when given.
    pub(crate) fn spawn_at(name: &str, log_dir: &Path, args: ServerArgs, start_at: Option<u128>) -> Starting {
        let log = log_dir.join(format!("{name}.log"));
        let running = spawn_child(&args, "127.0.0.1:0", &log, start_at);
        Starting { name: name.to_owned(), args, log, running }
    }

    /// The base URL, `http://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Kills the server with SIGKILL (no graceful shutdown, as a crash or the OOM killer would)
    /// and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut running) = self.child.take() {
            // An error here means the child already exited, which is what we want.
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the child to exit; SIGKILLs it after that.
    /// Returns the exit status, or `None` when it had to be killed.
    pub(crate) fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut running = self.child.take()?;
        let pid = running.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|status| status.success()), "cannot send SIGTERM to {pid}");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = running.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = running.child.kill();
        let _ = running.child.wait();
        None
    }

    /// Starts the server again with the same arguments on the same address (a provider keeps
    /// delivering to the same URL), after killing it if it still runs; waits for `/healthz`.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        append_log_line(&self.log, "==================== restart ====================");
        let listen = self.address.to_string();
        // The old socket's connections may linger in TIME_WAIT; tokio binds with SO_REUSEADDR,
        // but a port can still be briefly busy on a loaded machine, so try a few times.
        let mut attempt = 0;
        loop {
            let running = spawn_child(&self.args, &listen, &self.log, None);
            let starting =
                Starting { name: self.name.clone(), args: self.args.clone(), log: self.log.clone(), running };
            match starting.try_ready().await {
                Ok(server) => {
                    assert_eq!(server.address, self.address, "the restarted server kept its address");
                    let mut server = server;
                    self.child = server.child.take();
                    return;
                }
                Err((message, mut failed)) if attempt < 5 && message.contains("Address already in use") => {
                    failed.kill();
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err((message, mut failed)) => {
                    failed.kill();
                    panic!("{} did not restart: {message}\n{}", self.name, log_tail(&self.log, 60));
                }
            }
        }
    }

    /// The child's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Starting {
    /// Waits until the child has bound its listener and `/healthz` answers 200.
    ///
    /// # Panics
    ///
    /// When the child exits first or is not healthy within [`READY_TIMEOUT`], with its log.
    pub(crate) async fn ready(self) -> ServerProcess {
        let log = self.log.clone();
        let name = self.name.clone();
        match self.try_ready().await {
            Ok(server) => server,
            Err((message, mut failed)) => {
                failed.kill();
                panic!("{name} did not start: {message}\n{}", log_tail(&log, 80));
            }
        }
    }

    async fn try_ready(self) -> Result<ServerProcess, (String, ServerProcess)> {
        let Self { name, args, log, mut running } = self;
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut address = None;
        while address.is_none() {
            if let Some(status) = running.child.try_wait().ok().flatten() {
                let failed = ServerProcess {
                    name,
                    args,
                    log: log.clone(),
                    address: "0.0.0.0:0".parse().unwrap(),
                    child: None,
                };
                let tail = log_tail(&log, 20);
                return Err((format!("the child exited with {status} before listening; {tail}"), failed));
            }
            if Instant::now() > deadline {
                let failed = ServerProcess {
                    name,
                    args,
                    log,
                    address: "0.0.0.0:0".parse().unwrap(),
                    child: Some(running),
                };
                return Err(("the child never bound its listener".to_owned(), failed));
            }
            match running.lines.try_recv() {
                Ok(line) => {
                    if let Some(rest) = line.split(LISTENING).nth(1) {
                        address =
                            Some(rest.trim().parse::<SocketAddr>().expect("the child prints its address"));
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let server =
            ServerProcess { name, args, log, address: address.expect("set above"), child: Some(running) };
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("a client");
        let health = format!("{}/healthz", server.url());
        let mut server = server;
        loop {
            if let Some(running) = server.child.as_mut()
                && let Some(status) = running.child.try_wait().ok().flatten()
            {
                server.child = None;
                return Err((format!("the child exited with {status} before /healthz answered"), server));
            }
            if let Ok(response) = client.get(&health).send().await
                && response.status() == reqwest::StatusCode::OK
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err((format!("GET {health} never answered 200"), server));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let was_running = self.child.is_some();
        self.kill();
        if was_running && std::thread::panicking() {
            eprintln!("---- log of {} ({}) ----\n{}", self.name, self.log.display(), log_tail(&self.log, 60));
        }
    }
}

fn spawn_child(server: &ServerArgs, listen: &str, log: &Path, start_at: Option<u128>) -> Running {
    let args = server.with_listen(listen);
    let exe = std::env::current_exe().expect("the test binary's path");
    let stderr = OpenOptions::new().create(true).append(true).open(log).expect("the child's log file");
    let mut command = Command::new(exe);
    command.args(["--exact", CHILD_TEST, "--nocapture", "--test-threads", "1"]);
    // The child is configured by its arguments alone: every flag of the server also reads an
    // environment variable, and the parent's DATABASE_URL (set by .ci/run) must not turn a
    // SQLite server into a PostgreSQL one.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "DATABASE_URL" || (name.starts_with("SOS_") && !name.starts_with("SOS_TEST_")) {
            command.env_remove(name.as_ref());
        }
    }
    command.envs(server.envs.iter().map(|(name, value)| (name, value)));
    command.env(CHILD_ARGS, serde_json::to_string(&args).expect("arguments serialize"));
    // Relative defaults (such as `sos-data/`) land in the server's own directory, never in the
    // repository.
    command.current_dir(&server.dir);
    if let Some(start_at) = start_at {
        command.env(CHILD_START, start_at.to_string());
    }
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::from(stderr));
    let mut child = command.spawn().expect("a child server process");
    let stdin = child.stdin.take().expect("the child's stdin is piped");
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    Running { child, _stdin: stdin, lines }
}

fn append_log_line(log: &Path, line: &str) {
    if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(file, "{line}");
    }
}

/// The last `lines` lines of a log file.
pub(crate) fn log_tail(log: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(log) {
        let _ = file.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The child side
// ---------------------------------------------------------------------------------------------

/// What the child runs: `main`'s steps on the given arguments. Returns when the server shut
/// down (SIGTERM, Ctrl-C, or the parent gone).
pub(crate) fn child_main(args: Vec<String>) -> anyhow::Result<()> {
    use clap::Parser as _;

    wait_for_shared_start();
    let config = sos_server::Config::try_parse_from(std::iter::once("sos-server".to_owned()).chain(args))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        println!("{LISTENING} {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        sos_server::serve(config, listener, shutdown_signal()).await
    })
}

/// Installs a log subscriber like `main`'s (stderr, `RUST_LOG`, no colours).
pub(crate) fn init_child_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn wait_for_shared_start() {
    let Some(start_ms) = std::env::var(CHILD_START).ok().and_then(|text| text.parse::<u128>().ok()) else {
        return;
    };
    let now_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis()).unwrap_or(start_ms);
    if let Some(wait) = start_ms.checked_sub(now_ms) {
        std::thread::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0)));
    }
}

/// Resolves on SIGTERM or Ctrl-C, as `main`'s does, and also when the parent is gone (EOF on
/// standard input); in that last case the process exits by force if shutting down takes long.
async fn shutdown_signal() {
    let (parent_gone, parent_gone_receiver) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = parent_gone.send(());
        std::thread::sleep(Duration::from_secs(10));
        eprintln!("the parent test process is gone and shutdown takes too long; exiting");
        std::process::exit(3);
    });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = parent_gone_receiver => eprintln!("the parent test process is gone; shutting down"),
        _ = terminate.recv() => eprintln!("SIGTERM; shutting down"),
        _ = tokio::signal::ctrl_c() => eprintln!("Ctrl-C; shutting down"),
    }
}
