//! The memory store through the shared two-phase suite.

use sos_webhooks::MemoryStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_two_phase_conformance() {
    crate::conformance::two_phase_suite(MemoryStore::new()).await;
}
