//! Shared helpers: keys, clocks, child processes.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chrono::{TimeZone as _, Utc};
use sos_core::ManualClock;
use sos_webhooks::EventKey;

pub(crate) const CHILD_ROLE: &str = "SOS_CHILD_ROLE";
pub(crate) const CHILD_DB: &str = "SOS_CHILD_DB";
pub(crate) const CHILD_EVENTS: &str = "SOS_CHILD_EVENTS";
/// The wall-clock instant (Unix milliseconds) at which every child starts delivering, so that
/// the processes really race instead of the first one finishing before the others start.
pub(crate) const CHILD_START: &str = "SOS_CHILD_START_UNIX_MS";

/// Sleeps until the shared start instant the parent passed in [`CHILD_START`], if any.
pub(crate) fn wait_for_shared_start() {
    let Some(start_ms) = std::env::var(CHILD_START).ok().and_then(|text| text.parse::<u128>().ok()) else {
        return;
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis())
        .unwrap_or(start_ms);
    if let Some(wait) = start_ms.checked_sub(now_ms) {
        std::thread::sleep(std::time::Duration::from_millis(u64::try_from(wait).unwrap_or(0)));
    }
}

/// A start instant far enough ahead for every child process to be up and connected.
pub(crate) fn shared_start_in(lead: std::time::Duration) -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("the clock is after 1970");
    (now + lead).as_millis().to_string()
}
pub(crate) const CHILD_EVENT: &str = "SOS_CHILD_EVENT";
pub(crate) const IN_HANDLER: &str = "SOS_IN_HANDLER";
pub(crate) const RESULT: &str = "SOS_RESULT";

pub(crate) fn key(tenant: &str, event: &str) -> EventKey {
    EventKey::new(tenant.parse().expect("a valid tenant"), "stripe", event).expect("a valid key")
}

pub(crate) fn manual_clock() -> ManualClock {
    ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 9, 9, 0, 0).unwrap())
}

/// The role this process was started for, when it is a child.
pub(crate) fn child_role() -> Option<String> {
    std::env::var(CHILD_ROLE).ok()
}

/// Starts this test binary again, running only `test_name`, with `envs`.
pub(crate) fn spawn_child(test_name: &str, envs: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = Command::new(exe);
    command.args(["--exact", test_name, "--nocapture", "--test-threads", "1"]);
    for (name, value) in envs {
        command.env(name, value);
    }
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    command.spawn().expect("a child test process")
}

/// Reads the child's stdout on a thread; returns a receiver of its lines.
pub(crate) fn child_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Waits until the child prints `marker`, panicking after `timeout`.
pub(crate) fn wait_for_line(lines: &mpsc::Receiver<String>, marker: &str, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(marker) => return,
            Ok(_) => {}
            Err(error) => panic!("the child never printed {marker}: {error}"),
        }
    }
}

/// Delivery counts of one process, printed by children as `SOS_RESULT p a r`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) processed: u64,
    pub(crate) already: u64,
    pub(crate) retries: u64,
}

impl Counts {
    pub(crate) fn add(&mut self, other: Counts) {
        self.processed += other.processed;
        self.already += other.already;
        self.retries += other.retries;
    }

    pub(crate) fn line(&self) -> String {
        format!("{RESULT} {} {} {}", self.processed, self.already, self.retries)
    }

    pub(crate) fn parse(output: &str) -> Option<Self> {
        // libtest may print "test name ... " on the same line before the child's own output.
        let start = output.find(RESULT)? + RESULT.len();
        let line = output[start..].lines().next()?;
        let mut numbers = line.split_whitespace().map(|n| n.parse::<u64>().ok());
        Some(Self { processed: numbers.next()??, already: numbers.next()??, retries: numbers.next()?? })
    }
}
