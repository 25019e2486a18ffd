//! Channels: where signals reach people (Slack, Discord, Teams, a log, a test inbox).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::signal::Signal;

/// What a channel said about one delivery attempt.
///
/// There is deliberately no "sent" or "probably delivered" state: a signal counts as delivered
/// only when the channel acknowledged it and gave its own message id (named shape
/// `false-delivery`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeliveryReceipt {
    /// The channel accepted the message and identified it.
    Acknowledged {
        /// The channel's own id for the message (a Slack `ts`, a Discord message id, …).
        message_id: String,
    },
    /// The channel refused the message; sending it again unchanged will not help.
    Rejected {
        /// The channel's reason, as it gave it.
        reason: String,
    },
    /// The attempt failed before the channel answered (network, timeout, 5xx); it may be retried.
    Failed {
        /// What went wrong.
        reason: String,
    },
}

impl DeliveryReceipt {
    /// Whether the channel acknowledged the message.
    pub fn is_acknowledged(&self) -> bool {
        matches!(self, Self::Acknowledged { .. })
    }

    /// The channel's message id, when acknowledged.
    pub fn message_id(&self) -> Option<&str> {
        match self {
            Self::Acknowledged { message_id } => Some(message_id),
            _ => None,
        }
    }
}

/// A destination for signals.
///
/// This trait uses `#[async_trait]` because hosts hold channels as `Arc<dyn Channel>` and pick
/// them at run time from configuration.
///
/// Implementations must return [`DeliveryReceipt::Acknowledged`] only after the destination
/// confirmed the message, never merely because a request was sent or a peer is online.
#[async_trait::async_trait]
pub trait Channel: Send + Sync + fmt::Debug {
    /// A short, stable name for logs and receipts (`"slack"`, `"memory"`).
    fn name(&self) -> &str;

    /// Delivers one signal and reports what the destination said.
    async fn deliver(&self, signal: &Signal) -> DeliveryReceipt;
}

/// An in-memory inbox, for tests and examples. Clones share the same inbox.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use sos_core::{Channel, MemoryChannel, Signal};
///
/// let channel = MemoryChannel::new();
/// let signal = Signal::builder("acme".parse()?, "stale-deal".parse()?)
///     .subject("Deal with Acme")
///     .text("9 days since the last action.")
///     .build()?;
/// let receipt = channel.deliver(&signal).await;
/// assert_eq!(receipt.message_id(), Some("memory-1"));
/// assert_eq!(channel.delivered().len(), 1);
/// # Ok::<(), sos_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryChannel {
    state: Arc<Mutex<MemoryInbox>>,
}

#[derive(Debug, Default)]
struct MemoryInbox {
    delivered: Vec<Signal>,
    refusal: Option<MemoryRefusal>,
}

#[derive(Debug, Clone)]
enum MemoryRefusal {
    Reject(String),
    Fail(String),
}

impl MemoryChannel {
    /// An empty inbox that acknowledges every signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every following delivery come back [`DeliveryReceipt::Rejected`] with `reason`.
    pub fn reject_with(&self, reason: impl Into<String>) {
        self.lock().refusal = Some(MemoryRefusal::Reject(reason.into()));
    }

    /// Makes every following delivery come back [`DeliveryReceipt::Failed`] with `reason`.
    pub fn fail_with(&self, reason: impl Into<String>) {
        self.lock().refusal = Some(MemoryRefusal::Fail(reason.into()));
    }

    /// Makes following deliveries succeed again.
    pub fn accept(&self) {
        self.lock().refusal = None;
    }

    /// Every signal acknowledged so far, in order.
    pub fn delivered(&self) -> Vec<Signal> {
        self.lock().delivered.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInbox> {
        // The inbox is a plain list; it stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Channel for MemoryChannel {
    fn name(&self) -> &str {
        "memory"
    }

    async fn deliver(&self, signal: &Signal) -> DeliveryReceipt {
        let mut inbox = self.lock();
        match &inbox.refusal {
            Some(MemoryRefusal::Reject(reason)) => DeliveryReceipt::Rejected { reason: reason.clone() },
            Some(MemoryRefusal::Fail(reason)) => DeliveryReceipt::Failed { reason: reason.clone() },
            None => {
                inbox.delivered.push(signal.clone());
                DeliveryReceipt::Acknowledged { message_id: format!("memory-{}", inbox.delivered.len()) }
            }
        }
    }
}
