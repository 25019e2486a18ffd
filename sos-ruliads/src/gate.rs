//! The full gate between a fired signal and a person: grouping, inhibition, repeat, the cause
//! check, the trust gate and the trigger ceiling, on one path.
//!
//! [`Engine::run`](crate::engine::Engine::run) evaluates a batch and hands every fired signal to
//! [`Gate::round`], which, in this order:
//!
//! 1. **inhibits** signals silenced by an active source with equal labels (`inhibited`);
//! 2. holds back causes notified within `repeat_interval` (`repeat`) and flapping entities
//!    (`cooldown`);
//! 3. **groups** the rest by (tenant, ruliad), delaying them until the group is due (`grouped`);
//! 4. **claims** the causes of every due group's members in the [`StateStore`], all of the
//!    round's at once ([`StateStore::claim_causes`]: one statement on the database stores), so
//!    that several evaluators (in several processes) never send the same cause twice; a cause
//!    someone else claimed is held back as `repeat`;
//! 5. offers each group's one message to the **trust gate**, which releases it or keeps it with
//!    its reason (`trust` before the agent earned the right, `cooldown` when the budget is spent).
//!
//! The gate reuses its buffers from round to round and keeps a group of one signal inline, so a
//! round that decides one signal allocates little beyond the signal itself.
//!
//! A host whose released signal starts a self-healing action asks [`Gate::start_trigger`], which
//! records a refusal by the trigger ceiling as `ceiling` (or `repeat` for a replayed cause).
//!
//! Every held-back or delayed signal is returned in [`Round::suppressed`] and kept in the log
//! ([`Gate::suppressed`]) with its [`Reason`]; nothing disappears without a trace. The state is
//! plain serde data ([`GateState`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use sos_core::{Sha256Digest, Signal, SignalKind, TenantId};

use crate::ceiling::{Admission, Attempt, TriggerCeiling};
use crate::engine::Fired;
use crate::error::Result;
use crate::explain::Because;
use crate::grouping::{Grouper, GroupingConfig, GroupingState, Members, Notification, Suppressed};
use crate::ruliad::Class;
use crate::store::{CauseClaim, StateStore};
use crate::trust::{Reason, TrustConfig, TrustGate, TrustState};

/// What one round of the gate let through and held back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Round {
    /// The messages that go out now: one per due group, listing its members.
    pub released: Vec<Notification>,
    /// Every signal held back or delayed in this round, with its reason.
    pub suppressed: Vec<Suppressed>,
}

impl Round {
    /// The released member signals, in order.
    pub fn released_signals(&self) -> impl Iterator<Item = &Signal> {
        self.released.iter().flat_map(|notification| notification.members().iter())
    }
}

/// The gate's serializable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateState {
    /// The grouper's timers, notified causes and flapping history.
    pub grouping: GroupingState,
    /// The trust gate's lifecycle, budget and withheld signals.
    pub trust: TrustState,
    /// The class of every kind seen, so that a group flushed in a later round is offered to the
    /// trust gate as what it is.
    #[serde(default)]
    pub classes: BTreeMap<SignalKind, Class>,
    /// Causes this gate claimed whose message could not be sent yet (a later claim in the same
    /// group failed); they are sent in a later round without claiming again.
    #[serde(default)]
    pub claimed_unsent: BTreeSet<ClaimedCause>,
}

/// A cause this gate claimed in the [`StateStore`] and has not sent yet.
///
/// Keyed as the store keys its claims: (tenant, scope, cause), the scope being the signal's
/// kind. Two signals of different kinds with the same cause digest are different signals, and
/// each has its own claim.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum ClaimedCause {
    /// `[tenant, kind, cause]`: the claim of `cause` in scope `kind` for `tenant`.
    Scoped(TenantId, SignalKind, Sha256Digest),
    /// `[tenant, cause]`, as saved before the kind was part of the key: it stands for the
    /// first member of any kind with that cause (the behaviour of the saved gate).
    Unscoped(TenantId, Sha256Digest),
}

impl ClaimedCause {
    /// The claim of `signal`'s cause.
    pub fn of(signal: &Signal) -> Self {
        Self::Scoped(signal.tenant().clone(), signal.kind().clone(), *signal.cause())
    }
}

/// The full gate of one agent; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    grouper: Grouper,
    trust: TrustGate,
    classes: BTreeMap<SignalKind, Class>,
    claimed_unsent: BTreeSet<ClaimedCause>,
    /// Buffers reused across rounds (empty between rounds).
    buffers: Buffers,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Buffers {
    signals: Vec<Signal>,
    /// The explanations whose `because` line `signals` do not hold yet, one per signal.
    explanations: Vec<Option<Because>>,
    due: Vec<Notification>,
    claimed: Vec<bool>,
}

impl Gate {
    /// A gate for an agent planted at `planted_at`.
    ///
    /// # Errors
    ///
    /// [`crate::Error::InvalidParameter`] or [`crate::Error::TrustConfig`] for an invalid
    /// configuration.
    pub fn new(grouping: GroupingConfig, trust: TrustConfig, planted_at: DateTime<Utc>) -> Result<Self> {
        Ok(Self {
            grouper: Grouper::new(grouping)?,
            trust: TrustGate::plant(trust, planted_at)?,
            classes: BTreeMap::new(),
            claimed_unsent: BTreeSet::new(),
            buffers: Buffers::default(),
        })
    }

    /// A gate with saved state.
    ///
    /// # Errors
    ///
    /// As [`Gate::new`], or when the saved trust budget lies outside the configuration.
    pub fn restore(grouping: GroupingConfig, trust: TrustConfig, state: GateState) -> Result<Self> {
        Ok(Self {
            grouper: Grouper::restore(grouping, state.grouping)?,
            trust: TrustGate::restore(trust, state.trust)?,
            classes: state.classes,
            claimed_unsent: state.claimed_unsent,
            buffers: Buffers::default(),
        })
    }

    /// The state, to persist (for instance with [`StateStore::put`]).
    pub fn state(&self) -> GateState {
        GateState {
            grouping: self.grouper.state().clone(),
            trust: self.trust.state().clone(),
            classes: self.classes.clone(),
            claimed_unsent: self.claimed_unsent.clone(),
        }
    }

    /// The grouper.
    pub fn grouper(&self) -> &Grouper {
        &self.grouper
    }

    /// The trust gate.
    pub fn trust(&self) -> &TrustGate {
        &self.trust
    }

    /// The trust gate, to introduce the agent, count observed messages and record feedback.
    pub fn trust_mut(&mut self) -> &mut TrustGate {
        &mut self.trust
    }

    /// Every suppression recorded, oldest first (bounded by the grouping `log_capacity`).
    pub fn suppressed(&self) -> impl Iterator<Item = &Suppressed> {
        self.grouper.suppressed()
    }

    /// Runs one round: `fired` are the signals active at `now` (all of them, also those already
    /// notified, so that inhibition and flapping see the whole picture). Causes are claimed in
    /// `store`, all of the round's due groups at once.
    ///
    /// # Errors
    ///
    /// Whatever the store returns. Then nothing of this round was released: every member of
    /// every due group goes back to its group and is offered again in the next round (the
    /// causes claimed before the failure are remembered as this gate's, not claimed again).
    pub async fn round<S: StateStore>(
        &mut self,
        store: &S,
        now: DateTime<Utc>,
        fired: Vec<Fired>,
    ) -> Result<Round> {
        let mut signals = std::mem::take(&mut self.buffers.signals);
        let mut explanations = std::mem::take(&mut self.buffers.explanations);
        for fired in fired {
            if self.classes.get(fired.signal.kind()) != Some(&fired.class) {
                self.classes.insert(fired.signal.kind().clone(), fired.class);
            }
            let (signal, because) = fired.into_parts();
            signals.push(signal);
            explanations.push(because);
        }
        let mut round = Round::default();
        // The grouper writes each signal's `because` line when it joins its group.
        self.grouper.observe_into(now, &mut signals, &mut explanations, &mut round.suppressed);
        self.buffers.signals = signals;
        self.buffers.explanations = explanations;
        let mut due = std::mem::take(&mut self.buffers.due);
        self.grouper.flush_into(now, &mut due);
        if due.is_empty() {
            self.buffers.due = due;
            return Ok(round);
        }
        let mut claimed = std::mem::take(&mut self.buffers.claimed);
        if let Err(error) = self.claim(store, now, &due, &mut claimed).await {
            // Nothing is lost: every due member waits for the next round; the causes claimed
            // already are remembered as ours, so they are sent then without a second claim.
            let mut flags = claimed.iter();
            for notification in due.drain(..) {
                let members = notification.into_members();
                for member in &members {
                    if flags.next() == Some(&true) {
                        self.claimed_unsent.insert(ClaimedCause::of(member));
                    }
                }
                self.grouper.requeue(now, members);
            }
            self.buffers.due = due;
            self.buffers.claimed = claimed;
            return Err(error);
        }
        // Exactly as many messages as due groups at most: one small allocation, not a doubling
        // buffer of four.
        round.released.reserve_exact(due.len());
        let mut offset = 0;
        for notification in due.drain(..) {
            // This notification's claim outcomes, one per member (a missing flag is not ours).
            let count = notification.members().len();
            let end = (offset + count).min(claimed.len());
            let flags = &claimed[offset.min(end)..end];
            offset += count;
            let notification = if flags.len() == count && flags.iter().all(|&ours| ours) {
                // Every member's cause is ours: the message goes on as it is, without moving
                // its members.
                notification
            } else {
                let mut flags = flags.iter().copied();
                let Some(notification) = self.keep_claimed(now, notification, &mut flags, &mut round) else {
                    continue;
                };
                notification
            };
            let class = self.classes.get(notification.summary().kind()).copied().unwrap_or_default();
            let summary = notification.summary();
            match self.trust.admit(now, summary.tenant(), summary.id(), class) {
                None => round.released.push(notification),
                Some((reason, detail)) => {
                    for member in notification.members() {
                        round.suppressed.push(self.grouper.log(suppression(
                            now,
                            member,
                            reason,
                            detail.clone(),
                        )));
                    }
                    self.trust.keep(now, notification.into_summary(), class, reason, detail);
                }
            }
        }
        self.buffers.due = due;
        self.buffers.claimed = claimed;
        Ok(round)
    }

    /// Claims the causes of every member of the `due` notifications, setting one flag per member
    /// in order: `true` when the cause is this gate's to send. A cause this gate claimed in an
    /// earlier, failed round is its own without a second claim.
    async fn claim<S: StateStore>(
        &mut self,
        store: &S,
        now: DateTime<Utc>,
        due: &[Notification],
        claimed: &mut Vec<bool>,
    ) -> Result<()> {
        let members = || due.iter().flat_map(Notification::members);
        if self.claimed_unsent.is_empty() {
            let claims: SmallVec<[CauseClaim<'_>; 4]> = members()
                .map(|member| CauseClaim {
                    tenant: member.tenant(),
                    scope: member.kind().as_str(),
                    cause: member.cause(),
                })
                .collect();
            return store.claim_causes(now, &claims, claimed).await;
        }
        // Which members are ours without a claim, decided once and in order before claiming:
        // only the first member with a remembered cause takes it (as one claim after the other
        // did), so the claims' outcomes stay aligned with the members that made them.
        let mut taken: BTreeSet<ClaimedCause> = BTreeSet::new();
        let ours: Vec<bool> = members()
            .map(|member| {
                let scoped = ClaimedCause::of(member);
                if self.claimed_unsent.contains(&scoped) {
                    return taken.insert(scoped);
                }
                let unscoped = ClaimedCause::Unscoped(member.tenant().clone(), *member.cause());
                self.claimed_unsent.contains(&unscoped) && taken.insert(unscoped)
            })
            .collect();
        let claims: SmallVec<[CauseClaim<'_>; 4]> = members()
            .zip(&ours)
            .filter(|(_, ours)| !**ours)
            .map(|(member, _)| CauseClaim {
                tenant: member.tenant(),
                scope: member.kind().as_str(),
                cause: member.cause(),
            })
            .collect();
        let mut outcomes = Vec::with_capacity(claims.len());
        let result = store.claim_causes(now, &claims, &mut outcomes).await;
        // Merge: our own causes are `true` (and no longer pending), the others take their
        // claim's outcome.
        for key in taken {
            self.claimed_unsent.remove(&key);
        }
        claimed.clear();
        let mut outcomes = outcomes.iter().copied();
        claimed.extend(ours.iter().map(|&ours| ours || outcomes.next().unwrap_or(false)));
        result
    }

    /// The notification without the members whose cause was claimed elsewhere (each recorded as
    /// `repeat`); `None` when none is left. `flags` are the claim outcomes, one per member.
    fn keep_claimed(
        &mut self,
        now: DateTime<Utc>,
        notification: Notification,
        flags: &mut impl Iterator<Item = bool>,
        round: &mut Round,
    ) -> Option<Notification> {
        let (summary, mut members) = notification.into_parts();
        let count = members.len();
        let mut kept = Members::new();
        for member in members.drain(..) {
            if flags.next().unwrap_or(false) {
                kept.push(member);
                continue;
            }
            let detail = "already sent: this cause was claimed by another evaluator or an earlier run";
            round.suppressed.push(self.grouper.log(suppression(
                now,
                &member,
                Reason::Repeat,
                detail.to_owned(),
            )));
        }
        if kept.is_empty() {
            return None;
        }
        if kept.len() == count {
            return Some(Notification::from_parts(summary, kept));
        }
        // Some members were already sent elsewhere: the message lists only the others.
        Notification::of(now, kept)
    }

    /// Asks `ceiling` to start the self-healing action that `signal` calls for; a refusal is
    /// recorded like every other suppression (`ceiling`, or `repeat` for a cause that already
    /// started once).
    ///
    /// # Errors
    ///
    /// Whatever the ceiling's store returns.
    pub async fn start_trigger<C: TriggerCeiling>(
        &mut self,
        ceiling: &C,
        now: DateTime<Utc>,
        signal: &Signal,
        attribute: &str,
    ) -> Result<Admission> {
        let attempt = Attempt {
            tenant: signal.tenant().clone(),
            cause: *signal.cause(),
            attribute: attribute.to_owned(),
        };
        let admission = ceiling.try_start(now, &attempt).await?;
        if let Admission::Refused(refused) = admission {
            let detail = match refused {
                crate::ceiling::Refused::Ceiling => {
                    "the trigger ceiling is reached; retry when a running trigger finished"
                }
                crate::ceiling::Refused::Replay => "this cause already started a trigger once",
            };
            self.grouper.log(suppression(now, signal, refused.reason(), detail.to_owned()));
        }
        Ok(admission)
    }
}

fn suppression(now: DateTime<Utc>, signal: &Signal, reason: Reason, detail: String) -> Suppressed {
    Suppressed { signal: signal.id(), kind: signal.kind().clone(), reason, detail, at: now }
}
