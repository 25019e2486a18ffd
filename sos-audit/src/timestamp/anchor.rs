//! Timestamped anchors: the RFC 3161 token of a checkpoint travels with its anchor.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{TimestampAuthority, TimestampToken, TsaCertificate};
use crate::tlog::{Anchor, AnchorReceipt, AnchorSink};
use crate::{Error, Result};

/// Timestamps `anchor.note` (the signed checkpoint, byte for byte) with `authority` and attaches
/// the token's DER to the anchor ([`Anchor::timestamp_token`]), replacing any token it held.
///
/// # Errors
///
/// Whatever [`TimestampAuthority::timestamp`] returns.
pub async fn timestamp_anchor<A>(authority: &A, anchor: Anchor) -> Result<Anchor>
where
    A: TimestampAuthority + ?Sized,
{
    let token = authority.timestamp(anchor.note.as_bytes()).await?;
    Ok(anchor.with_timestamp_token(token.into_der()))
}

/// Re-verifies the timestamp token of a stored anchor against its note and the TSA's certificate:
/// `Ok(None)` when the anchor has no token, `Ok(Some(token))` when it verifies.
///
/// # Errors
///
/// The error of [`TimestampToken::verify`]: a token over another note is
/// [`Error::TimestampImprintMismatch`].
pub fn verify_anchor_timestamp(
    anchor: &Anchor,
    certificate: &TsaCertificate,
) -> Result<Option<TimestampToken>> {
    anchor
        .timestamp_token
        .as_deref()
        .map(|token| TimestampToken::verify(token, anchor.note.as_bytes(), certificate))
        .transpose()
}

/// An [`AnchorSink`] that timestamps each checkpoint with a TSA and hands it, token attached, to
/// another sink. Give it to a [`Checkpointer`](crate::tlog::Checkpointer) with `with_anchor`.
///
/// A checkpoint is anchored only with a verified token: when the TSA is unreachable or its reply
/// does not verify, the write fails and the checkpointer reports the error (and tries again at its
/// next checkpoint). A retry of a note the inner sink already holds keeps the token stored first.
pub struct TimestampedAnchorSink<A> {
    authority: A,
    inner: Arc<dyn AnchorSink>,
}

impl<A: fmt::Debug> fmt::Debug for TimestampedAnchorSink<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimestampedAnchorSink")
            .field("authority", &self.authority)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<A> TimestampedAnchorSink<A> {
    /// A sink that timestamps with `authority`, then writes to `inner`.
    pub fn new(authority: A, inner: Arc<dyn AnchorSink>) -> Self {
        Self { authority, inner }
    }
}

impl<A> AnchorSink for TimestampedAnchorSink<A>
where
    A: TimestampAuthority + fmt::Debug,
{
    fn write<'a>(&'a self, anchor: &'a Anchor) -> BoxFuture<'a, Result<AnchorReceipt>> {
        Box::pin(async move {
            let timestamped = timestamp_anchor(&self.authority, anchor.clone()).await?;
            match self.inner.write(&timestamped).await {
                // A write-once sink that already holds this note with the token of an earlier
                // attempt refuses the new token; the note itself may still be the same (a retry).
                // Writing the anchor as it came tells the two apart: a held note is reported as
                // present, a different note is still a conflict.
                Err(Error::AnchorConflict { .. }) => self.inner.write(anchor).await,
                other => other,
            }
        })
    }

    fn latest<'a>(&'a self, tenant: &'a sos_core::TenantId) -> BoxFuture<'a, Result<Option<Anchor>>> {
        self.inner.latest(tenant)
    }
}
