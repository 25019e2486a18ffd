//! The streaming chain verifier.

use std::fmt;

use sos_core::{Sha256Digest, TenantId};

use crate::entry::{AuditEntry, ChainHead};
use crate::error::{Error, Result};
use crate::store::AuditStore;

/// What the verifier found wrong, at the first bad entry. Verification stops there.
///
/// [`Finding::position`] is the earliest sequence number that may have been altered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// The entry at `seq` does not match its own hash: a field (or the stored hash) was modified.
    Modified {
        /// The position where the entry was expected.
        seq: u64,
        /// The sequence number the entry claims.
        claimed_seq: u64,
    },
    /// Entries from `seq` to `found - 1` are missing: deleted (or moved away).
    Missing {
        /// The first missing sequence number.
        seq: u64,
        /// The sequence number found in its place.
        found: u64,
    },
    /// Entries `seq` and `found` appear in the wrong order.
    Swapped {
        /// The sequence number expected at this position.
        seq: u64,
        /// The sequence number that came first instead.
        found: u64,
    },
    /// A sequence number appears a second time: an entry was inserted or replayed.
    Duplicate {
        /// The first position that may be forged.
        seq: u64,
        /// The sequence number that appears again.
        repeated: u64,
    },
    /// Entry `seq` is self-consistent but its `prev_hash` is not the previous entry's hash: one of
    /// the two was rewritten with a recomputed hash.
    BrokenLink {
        /// The entry whose link is broken.
        seq: u64,
    },
    /// Entry `seq` is self-consistent but belongs to another tenant's chain.
    ForeignTenant {
        /// The entry's position.
        seq: u64,
        /// The tenant it names.
        tenant: TenantId,
    },
    /// The chain ends before a head recorded elsewhere: its tail was truncated.
    Truncated {
        /// The last sequence number present (0 for an empty chain).
        last: u64,
        /// The head that was expected.
        expected: ChainHead,
    },
    /// The entry at a recorded head's position has another hash.
    HeadMismatch {
        /// The head's sequence number.
        seq: u64,
        /// The recorded hash.
        expected: Sha256Digest,
        /// The chain's hash at that position.
        found: Sha256Digest,
    },
    /// A stored row could not be read as an entry at all.
    Malformed {
        /// The stored sequence number.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
}

impl Finding {
    /// The earliest sequence number that may have been altered.
    pub fn position(&self) -> u64 {
        match self {
            Self::Modified { seq, .. }
            | Self::Missing { seq, .. }
            | Self::Swapped { seq, .. }
            | Self::Duplicate { seq, .. }
            | Self::ForeignTenant { seq, .. }
            | Self::HeadMismatch { seq, .. }
            | Self::Malformed { seq, .. } => *seq,
            // Either this entry's link or the previous entry (with its hash recomputed) changed.
            Self::BrokenLink { seq } => seq.saturating_sub(1).max(1),
            Self::Truncated { last, .. } => last + 1,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Modified { seq, claimed_seq } if seq == claimed_seq => {
                write!(f, "entry {seq} was modified: its fields do not match its hash")
            }
            Self::Modified { seq, claimed_seq } => write!(
                f,
                "entry {seq} was modified: it claims seq {claimed_seq} and its fields do not match its hash"
            ),
            Self::Missing { seq, found } if *found == seq + 1 => {
                write!(f, "entry {seq} is missing (deleted): entry {found} follows entry {}", seq - 1)
            }
            Self::Missing { seq, found } => {
                write!(
                    f,
                    "entries {seq} to {} are missing (deleted): entry {found} follows entry {}",
                    found - 1,
                    seq - 1
                )
            }
            Self::Swapped { seq, found } => {
                write!(f, "entries {seq} and {found} are swapped: entry {found} comes before entry {seq}")
            }
            Self::Duplicate { seq, repeated } if seq == repeated => {
                write!(f, "entry {seq} appears twice: a forged entry was inserted at this position")
            }
            Self::Duplicate { seq, repeated } => {
                write!(f, "position {seq} repeats entry {repeated}: an entry was replayed or inserted here")
            }
            Self::BrokenLink { seq } => write!(
                f,
                "entry {seq} does not link to entry {}: one of them was rewritten with a recomputed hash",
                seq.saturating_sub(1)
            ),
            Self::ForeignTenant { seq, tenant } => {
                write!(f, "entry {seq} belongs to tenant {tenant:?}, not to this chain")
            }
            Self::Truncated { last, expected } => {
                write!(
                    f,
                    "chain ends at entry {last} but the recorded head is {expected}: the tail was truncated"
                )
            }
            Self::HeadMismatch { seq, expected, found } => {
                write!(f, "entry {seq} has hash {found} but the recorded head says {expected}")
            }
            Self::Malformed { seq, reason } => write!(f, "entry {seq} is unreadable: {reason}"),
        }
    }
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// The chain's tenant (`None` for an empty chain with no tenant given).
    pub tenant: Option<TenantId>,
    /// The last entry (`None` for an empty chain).
    pub head: Option<ChainHead>,
    /// How many entries were checked.
    pub entries: u64,
}

/// The verifier's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry checked out.
    Intact(VerifiedChain),
    /// The chain was tampered with.
    Tampered {
        /// The chain's tenant, if known.
        tenant: Option<TenantId>,
        /// The first bad entry and why.
        finding: Finding,
        /// How many entries were checked before the finding.
        entries_checked: u64,
    },
}

impl Verdict {
    /// Whether the chain is intact.
    pub fn is_intact(&self) -> bool {
        matches!(self, Self::Intact(_))
    }

    /// The finding, if the chain was tampered with.
    pub fn finding(&self) -> Option<&Finding> {
        match self {
            Self::Intact(_) => None,
            Self::Tampered { finding, .. } => Some(finding),
        }
    }
}

/// Checks one tenant's chain entry by entry, in constant memory.
///
/// Push entries in the order they are stored (by sequence number); the first bad entry ends
/// verification with a [`Finding`].
///
/// ```
/// use sos_audit::{ChainVerifier, NewEntry, Verdict};
/// use sos_core::Sha256Digest;
///
/// let tenant: sos_core::TenantId = "acme".parse()?;
/// let first = NewEntry::new(tenant.clone(), "alice", "login", "", &serde_json::json!({}))?
///     .into_entry(1, chrono::Utc::now(), Sha256Digest::ZERO)?;
/// let mut verifier = ChainVerifier::new(Some(tenant));
/// verifier.push(&first);
/// assert!(verifier.finish().is_intact());
/// # Ok::<(), sos_audit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    tenant: Option<TenantId>,
    next_seq: u64,
    last_hash: Sha256Digest,
    expected_heads: Vec<ChainHead>,
    pending_gap: Option<u64>,
    finding: Option<Finding>,
    entries: u64,
    scratch: Vec<u8>,
}

impl ChainVerifier {
    /// A verifier for `tenant`'s chain; with `None`, the first entry names the tenant.
    pub fn new(tenant: Option<TenantId>) -> Self {
        Self {
            tenant,
            next_seq: 1,
            last_hash: Sha256Digest::ZERO,
            expected_heads: Vec::new(),
            pending_gap: None,
            finding: None,
            entries: 0,
            scratch: Vec::with_capacity(1024),
        }
    }

    /// Also requires the chain to reach `head` with the same hash there (a head recorded outside
    /// the store catches a truncated tail).
    pub fn expect_head(&mut self, head: ChainHead) -> &mut Self {
        self.expected_heads.push(head);
        self
    }

    /// The finding so far, if any.
    pub fn finding(&self) -> Option<&Finding> {
        self.finding.as_ref()
    }

    /// Checks the next entry. Returns `false` once a finding is known (later entries are ignored).
    pub fn push(&mut self, entry: &AuditEntry) -> bool {
        if self.finding.is_some() {
            return false;
        }
        if let Some(found) = self.pending_gap.take() {
            // One entry of look-ahead tells a swap (the missing entry comes next) from a deletion.
            let finding = if entry.seq == self.next_seq {
                Finding::Swapped { seq: self.next_seq, found }
            } else {
                Finding::Missing { seq: self.next_seq, found }
            };
            self.finding = Some(finding);
            return false;
        }
        let finding = self.check(entry);
        if finding.is_some() {
            self.finding = finding;
            return false;
        }
        if self.pending_gap.is_some() {
            return true;
        }
        self.entries += 1;
        self.next_seq += 1;
        self.last_hash = entry.hash;
        true
    }

    fn check(&mut self, entry: &AuditEntry) -> Option<Finding> {
        let expected = self.next_seq;
        match entry.compute_hash_with(&mut self.scratch) {
            Ok(hash) if hash == entry.hash => {}
            _ => return Some(Finding::Modified { seq: expected, claimed_seq: entry.seq }),
        }
        if entry.seq > expected {
            self.pending_gap = Some(entry.seq);
            return None;
        }
        if entry.seq < expected {
            // Right after its twin, either copy may be the forgery: the earlier position counts.
            // Further down, everything before this position checked out: it is the replay.
            let position = if entry.seq + 1 == expected { entry.seq } else { expected };
            return Some(Finding::Duplicate { seq: position, repeated: entry.seq });
        }
        match &self.tenant {
            Some(tenant) if *tenant != entry.tenant => {
                return Some(Finding::ForeignTenant { seq: expected, tenant: entry.tenant.clone() });
            }
            Some(_) => {}
            None => self.tenant = Some(entry.tenant.clone()),
        }
        if entry.prev_hash != self.last_hash {
            return Some(Finding::BrokenLink { seq: expected });
        }
        for head in &self.expected_heads {
            if head.seq == expected && head.hash != entry.hash {
                return Some(Finding::HeadMismatch { seq: expected, expected: head.hash, found: entry.hash });
            }
        }
        None
    }

    /// Records a stored row that could not be read as an entry.
    ///
    /// Rows are read in `seq` order, so the unreadable row sits at the next expected position
    /// (or after a gap, which is then reported first).
    pub fn push_malformed(&mut self, reason: String) {
        if self.finding.is_some() {
            return;
        }
        self.finding = Some(match self.pending_gap.take() {
            Some(found) => Finding::Missing { seq: self.next_seq, found },
            None => Finding::Malformed { seq: self.next_seq, reason },
        });
    }

    /// Ends the stream and gives the verdict.
    pub fn finish(mut self) -> Verdict {
        if self.finding.is_none()
            && let Some(found) = self.pending_gap.take()
        {
            self.finding = Some(Finding::Missing { seq: self.next_seq, found });
        }
        let last = self.next_seq - 1;
        if self.finding.is_none()
            && let Some(head) =
                self.expected_heads.iter().filter(|head| head.seq > last).min_by_key(|head| head.seq)
        {
            self.finding = Some(Finding::Truncated { last, expected: *head });
        }
        match self.finding {
            Some(finding) => {
                Verdict::Tampered { tenant: self.tenant, finding, entries_checked: self.entries }
            }
            None => Verdict::Intact(VerifiedChain {
                tenant: self.tenant,
                head: (last > 0).then_some(ChainHead { seq: last, hash: self.last_hash }),
                entries: self.entries,
            }),
        }
    }
}

/// How many entries [`verify_store`] reads per page.
pub const PAGE_SIZE: u32 = 1000;

/// Verifies `tenant`'s chain in `store`, page by page (constant memory).
///
/// The store's own head row is checked as an expected head too, read before the entries so that
/// concurrent appends cannot cause a false alarm. `progress` is called with the number of entries
/// checked after each page.
///
/// # Errors
///
/// [`Error::Storage`] when the store cannot be read. Tampering is a [`Verdict`], not an error.
pub async fn verify_store<S: AuditStore>(
    store: &S,
    tenant: &TenantId,
    expect_head: Option<ChainHead>,
    mut progress: impl FnMut(u64),
) -> Result<Verdict> {
    let mut verifier = ChainVerifier::new(Some(tenant.clone()));
    if let Some(head) = expect_head {
        verifier.expect_head(head);
    }
    match store.head(tenant).await {
        Ok(Some(head)) => {
            verifier.expect_head(head);
        }
        Ok(None) => {}
        Err(Error::CorruptEntry { reason, .. }) => {
            verifier.push_malformed(format!("head row: {reason}"));
            return Ok(verifier.finish());
        }
        Err(error) => return Err(error),
    }
    let mut after = 0;
    let mut checked = 0u64;
    loop {
        let page = match store.read_page(tenant, after, PAGE_SIZE).await {
            Ok(page) => page,
            Err(Error::CorruptEntry { reason, .. }) => {
                // Verify the readable rows before the unreadable one first, row by row, so that an
                // earlier finding is not masked by it.
                loop {
                    match store.read_page(tenant, after, 1).await {
                        Ok(one) => {
                            let Some(entry) = one.first() else { break };
                            after = entry.seq;
                            if !verifier.push(entry) {
                                return Ok(verifier.finish());
                            }
                        }
                        Err(Error::CorruptEntry { .. }) => break,
                        Err(error) => return Err(error),
                    }
                }
                verifier.push_malformed(reason.to_owned());
                break;
            }
            Err(error) => return Err(error),
        };
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() == PAGE_SIZE as usize;
        for entry in &page {
            if !verifier.push(entry) {
                return Ok(verifier.finish());
            }
            checked += 1;
        }
        progress(checked);
        if !full {
            break;
        }
    }
    Ok(verifier.finish())
}

/// Verifies a JSONL chain file (see [`JsonlReader`](crate::JsonlReader)) line by line.
///
/// # Errors
///
/// [`Error::MalformedLine`] naming the first line that is not an entry; [`Error::Io`] when
/// reading fails.
pub fn verify_jsonl<R: std::io::BufRead>(
    reader: R,
    expect_head: Option<ChainHead>,
    mut progress: impl FnMut(u64),
) -> Result<Verdict> {
    let mut verifier = ChainVerifier::new(None);
    if let Some(head) = expect_head {
        verifier.expect_head(head);
    }
    let mut lines = crate::jsonl::JsonlReader::new(reader);
    let mut checked = 0u64;
    while let Some(entry) = lines.next_entry()? {
        if !verifier.push(&entry) {
            break;
        }
        checked += 1;
        if checked.is_multiple_of(4096) {
            progress(checked);
        }
    }
    progress(checked);
    Ok(verifier.finish())
}
