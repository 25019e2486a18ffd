//! Resonance routing: signals go to the agents whose identity vectors they resemble.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use sos_core::{DomainHasher, Signal, SignalId};

use crate::error::{Error, Result};
use crate::vector::{AgentName, DIMENSIONS, IdentityVector};

/// Agents per block of the struct-of-arrays layout.
const LANES: usize = 8;

/// One block of the struct-of-arrays layout: 8 agents' `r` views stored exactly as 16-bit
/// halves `h = (r − 1) / 2 = u − 32768` (so `r = 2h + 1`), dimension-major so that one block
/// scores 8 agents with straight-line multiply-adds, and their `1 / |r|` for the float scores.
/// 36 bytes per agent: half the bytes of pre-normalised `f32` plus one `f32` norm.
#[derive(Debug, Clone, Copy)]
struct Block {
    halves: [[i16; LANES]; DIMENSIONS],
    inverse_norms: [f32; LANES],
}

impl Block {
    /// Padding lanes score exactly 0 (their inverse norm is 0) and are never candidates.
    const EMPTY: Self = Self { halves: [[0; LANES]; DIMENSIONS], inverse_norms: [0.0; LANES] };
}

/// A bound on `|float score − cosine|` for every agent and signal: `2^-18`, that is 64 units
/// of `f32` round-off `u = 2^-24`.
///
/// Why it holds (the float score is `(c + Σ_d h_d·w_d) · fl(1/|r|)`, summed left to right in
/// `f32` with `c` first, where `ŝ'_d = fl32(s_d / |s|)`, `w_d = 2ŝ'_d` and `c = fl32(Σ_d ŝ'_d)`):
///
/// - `ŝ'_d` is `ŝ_d = s_d/|s|` within `1.01u` relatively (the `f64` steps add `2^-52`; `|s_d|`
///   is `0` or at least `2^-22·|s|`, far from subnormals); `w_d` doubles exactly; the `f64` sum
///   behind `c` is exact (16 `f32` values spanning at most 46 bits), so `|c − Σŝ'_d| ≤ 4.01u`.
/// - `c + Σ h_d·w_d = Σ (2h_d + 1)·ŝ'_d = Σ r_d·ŝ'_d` up to `c`'s rounding, and that differs
///   from `T = Σ r_d·ŝ_d = cosine·|r|` by at most `1.01u·Σ|r_d ŝ_d| ≤ 1.01u·|r|`.
/// - 17 terms summed in `f32` with one rounded product each: error at most
///   `γ_17·(|c| + Σ|h_d w_d|)` (Higham, eq. 3.5), `γ_17 = 17u/(1 − 17u)`, and since
///   `2|h_d| + 1 ≤ |r_d| + 2`, that sum is at most `(1 + 1.01u)·(|r| + 2·Σ|ŝ_d|) ≤ 1.02·(|r| + 8)`.
/// - `fl(1/|r|)` is within `1.01u` relatively and the last product adds `u`; `|cosine| ≤ 1`.
///
/// Altogether `|score − cosine| ≤ 2.02u + (4.01u + 8·17.01u)/|r| + 1.01u + 17.01u·1.02`, and
/// with `|r| ≥ 4` (16 odd components) that is below `56u`. The exact scan keeps every agent
/// whose float score is at least the k-th best float score minus twice this bound (one more `u`
/// covers the rounding of that subtraction), so it never drops an agent of the exact top k.
/// Rust never contracts `a·b + c` into a fused multiply-add on its own, and vectorised lanes
/// round like scalar code, so the bound holds on every CPU; `float_score_error_bound_holds`
/// checks it on random and extreme vectors.
const FLOAT_SCORE_ERROR: f32 = 1.0 / 262_144.0;

/// The largest magnitude of a [`SignalVector`] component.
pub const MAX_SIGNAL_COMPONENT: i32 = 1 << 20;

/// A signal mapped into the identity space: 16 integers of magnitude at most
/// [`MAX_SIGNAL_COMPONENT`].
///
/// Integers keep the exact routing mode exact: a dot product with an agent's `r` view fits an
/// `i64`, and comparing two cosines by cross-multiplication fits an `i128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignalVector([i32; DIMENSIONS]);

impl SignalVector {
    /// Wraps 16 components.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when a component's magnitude exceeds [`MAX_SIGNAL_COMPONENT`] or
    /// all components are zero (a zero vector has no direction).
    pub fn new(components: [i32; DIMENSIONS]) -> Result<Self> {
        if components.iter().any(|value| value.unsigned_abs() > MAX_SIGNAL_COMPONENT.unsigned_abs()) {
            return Err(Error::InvalidConfig {
                reason: "a signal vector component exceeds 2^20 in magnitude",
            });
        }
        if components.iter().all(|value| *value == 0) {
            return Err(Error::InvalidConfig { reason: "a signal vector must not be all zeros" });
        }
        Ok(Self(components))
    }

    /// The direction of an identity vector (its `r` view): a signal "like this agent".
    pub fn from_identity(vector: &IdentityVector) -> Self {
        Self(vector.r())
    }

    /// The 16 components.
    pub const fn components(&self) -> &[i32; DIMENSIONS] {
        &self.0
    }

    fn norm_squared(&self) -> i64 {
        self.0.iter().map(|value| i64::from(*value) * i64::from(*value)).sum()
    }

    /// The weights a block is scored with: `w_d = 2·fl32(s_d/|s|)` and `c = fl32(Σ_d fl32(s_d/|s|))`,
    /// so that `c + Σ_d h_d·w_d = Σ_d r_d·s_d/|s|` for `r = 2h + 1`.
    fn weights(&self) -> Weights {
        // `SignalVector::new` refuses the zero vector, so the norm is never zero.
        let norm = (self.norm_squared() as f64).sqrt();
        let unit = self.0.map(|value| (f64::from(value) / norm) as f32);
        Weights {
            doubled: unit.map(|value| 2.0 * value),
            constant: unit.iter().map(|value| f64::from(*value)).sum::<f64>() as f32,
        }
    }
}

/// A signal prepared for the float scan (see [`SignalVector::weights`]).
#[derive(Debug, Clone, Copy)]
struct Weights {
    doubled: [f32; DIMENSIONS],
    constant: f32,
}

/// Maps a signal into the identity space. Hosts implement it to say what their signals are about.
pub trait SignalProfile: Send + Sync + fmt::Debug {
    /// The direction of `signal`.
    fn profile(&self, signal: &Signal) -> SignalVector;
}

/// The default profile: `3·r(kind) + r(kind, evidence)`.
///
/// `r(kind)` is the `r` view of `DomainHasher("sos-identity/signal-kind/v1").str_field(kind)`;
/// `r(kind, evidence)` that of `DomainHasher("sos-identity/signal-evidence/v1")` over the kind and
/// the evidence as canonical JSON (object keys sorted, no whitespace). Signals of one kind
/// therefore cluster around one direction (cosine about 0.95 with it), and their evidence
/// spreads them a little, so one kind is not pinned to one agent.
#[derive(Debug, Clone, Copy, Default)]
pub struct KindEvidenceProfile;

impl SignalProfile for KindEvidenceProfile {
    fn profile(&self, signal: &Signal) -> SignalVector {
        let mut kind = DomainHasher::new("sos-identity/signal-kind/v1");
        // Kinds are at most 64 bytes: the field cannot exceed the u32 limit.
        let _ = kind.str_field(signal.kind().as_str());
        let kind = IdentityVector::from_bytes(kind.finish().to_bytes()).r();
        let mut canonical = String::new();
        canonical_json(signal.evidence(), &mut canonical);
        let mut evidence = DomainHasher::new("sos-identity/signal-evidence/v1");
        let _ = evidence.str_field(signal.kind().as_str());
        // Evidence is bounded by the signal's own size limits, far below 4 GiB; were it longer,
        // the hash would simply cover the kind alone, which is still a valid direction.
        let _ = evidence.str_field(&canonical);
        let evidence = IdentityVector::from_bytes(evidence.finish().to_bytes()).r();
        // |3·65535 + 65535| < 2^20 and both parts are odd, so the sum is even but never all zero
        // unless evidence = −3·kind componentwise, which odd values within range cannot reach
        // for every component at once; fall back to the kind alone in that impossible case.
        let components: [i32; DIMENSIONS] = std::array::from_fn(|d| 3 * kind[d] + evidence[d]);
        SignalVector::new(components).unwrap_or(SignalVector(kind))
    }
}

/// Canonical JSON: object keys in byte order, no whitespace, serde_json's number and string
/// formatting. Independent of whether serde_json preserves insertion order.
fn canonical_json(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (position, key) in keys.into_iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(inner) = map.get(key) {
                    canonical_json(inner, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (position, item) in items.iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// How scores are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub enum ScoreMode {
    /// `f32` cosines computed from the 16-bit blocked layout, ranked as floats: the fastest.
    /// Within `2^-18` of the true cosine, so it can disagree with [`ScoreMode::Exact`] only
    /// between agents whose cosines are closer than that.
    #[default]
    Float,
    /// `i64` dot products of the `r` views, cosines compared by cross-multiplication in `i128`:
    /// the same winner on every CPU and compiler, bit for bit. The same float scan first skips
    /// every agent that provably cannot reach the top k, so it costs little more than `Float`.
    Exact,
}

/// How load decides between the ranked candidates.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
#[non_exhaustive]
pub enum LoadPolicy {
    /// Bounded load: walk the ranking to the first agent whose load stays within
    /// `ceil((1 + epsilon) · (total load + 1) / agents)` (the default, `epsilon` 0.25).
    #[default]
    Bounded,
    /// Always the best-scoring agent. Unfair: real signals cluster, and a cluster's nearest
    /// agent then takes all of it.
    Argmax,
}

/// Router settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RouterConfig {
    /// Scoring mode.
    pub mode: ScoreMode,
    /// Load policy.
    pub load: LoadPolicy,
    /// The slack of bounded load, in `(0, 16]`.
    pub epsilon: f64,
    /// Whether a subject seen before goes back to its agent while that agent has capacity.
    pub sticky: bool,
    /// The most subjects remembered for stickiness; when full, the memory is cleared.
    pub max_sticky_subjects: usize,
    /// How many threads a scan of at least [`PARALLEL_MIN_AGENTS`] agents is split over, in
    /// `1..=64`. The default, 1, scans on the calling thread; 2 or more split the agent array
    /// into block-aligned chunks scanned on scoped threads whose top lists are merged, which
    /// lowers latency when memory bandwidth grows with cores. Results are identical either way.
    pub threads: usize,
}

/// The fewest agents a scan is split over threads for; below it, thread start-up costs more than
/// the scan.
pub const PARALLEL_MIN_AGENTS: usize = 65_536;

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            mode: ScoreMode::Float,
            load: LoadPolicy::Bounded,
            epsilon: 0.25,
            sticky: true,
            max_sticky_subjects: 100_000,
            threads: 1,
        }
    }
}

impl RouterConfig {
    /// Sets the scoring mode.
    pub fn with_mode(mut self, mode: ScoreMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the load policy.
    pub fn with_load(mut self, load: LoadPolicy) -> Self {
        self.load = load;
        self
    }

    /// Sets the bounded-load slack.
    pub fn with_epsilon(mut self, epsilon: f64) -> Self {
        self.epsilon = epsilon;
        self
    }

    /// Turns stickiness on or off.
    pub fn with_sticky(mut self, sticky: bool) -> Self {
        self.sticky = sticky;
        self
    }

    /// Sets how many threads a large scan is split over (see [`RouterConfig::threads`]).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }
}

/// One ranked agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// The agent.
    pub agent: AgentName,
    /// Cosine similarity in `[-1, 1]` (computed in `f64` for display; the ranking itself used the
    /// configured mode).
    pub score: f64,
}

/// Which rule picked the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum AppliedRule {
    /// The subject went back to the agent that handled it before.
    Sticky,
    /// The best-scoring agent had capacity (or the policy is argmax).
    Best,
    /// Bounded load skipped `skipped` better-scoring agents at capacity.
    Overflow {
        /// How many better-scoring agents were full.
        skipped: usize,
    },
}

/// The outcome of routing one signal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Routed {
    /// The chosen agent.
    pub agent: AgentName,
    /// Its cosine similarity with the signal.
    pub score: f64,
    /// Which rule chose it.
    pub rule: AppliedRule,
    /// The per-agent capacity at the time (`u64::MAX` under argmax).
    pub capacity: u64,
}

/// One candidate of an explanation, with the 16 terms of its cosine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainedCandidate {
    /// The agent.
    pub agent: AgentName,
    /// Cosine similarity.
    pub score: f64,
    /// `a_d · s_d / (|a|·|s|)` for each dimension `d`; they sum to `score`.
    pub contributions: [f64; DIMENSIONS],
    /// The agent's current load.
    pub load: u64,
}

/// Why a signal would go where it goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The top candidates, best first.
    pub candidates: Vec<ExplainedCandidate>,
    /// What routing would do now (without changing any load).
    pub decision: Routed,
}

/// Routes signals to agents by cosine similarity of identity vectors, with bounded load,
/// stickiness by subject and deterministic tie-breaking.
///
/// Agents sit in blocks of 8 × 16 exact 16-bit `r` halves and 8 `f32` inverse norms
/// (dimension-major, so one block scores 8 agents with straight-line multiply-adds): 36 bytes
/// per agent, which both modes scan.
///
/// ```
/// use sos_identity::{AgentName, IdentityVector, ResonanceRouter, RouterConfig, SignalVector};
///
/// let mut router = ResonanceRouter::new(RouterConfig::default())?;
/// for name in ["ada", "grace", "edsger"] {
///     router.add(AgentName::new(name)?, IdentityVector::derive(name, "engineer")?)?;
/// }
/// let like_grace = SignalVector::from_identity(&IdentityVector::derive("grace", "engineer")?);
/// let top = router.top_k(&like_grace, [0; 16], 1);
/// assert_eq!(top[0].agent.as_str(), "grace");
/// # Ok::<(), sos_identity::Error>(())
/// ```
#[derive(Debug)]
pub struct ResonanceRouter {
    config: RouterConfig,
    names: Vec<AgentName>,
    index: HashMap<AgentName, usize>,
    blocks: Vec<Block>,
    norms: Vec<i64>,
    loads: Vec<u64>,
    total_load: u64,
    subjects: HashMap<[u8; 32], AgentName>,
}

/// A score in a form both modes can order: `f32` cosine, or an exact (dot, squared norm) pair.
#[derive(Debug, Clone, Copy)]
enum Score {
    Float(f32),
    Exact { dot: i64, norm: i64 },
}

impl Score {
    fn compare(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Float(a), Self::Float(b)) => a.total_cmp(b),
            (Self::Exact { dot: dot_a, norm: norm_a }, Self::Exact { dot: dot_b, norm: norm_b }) => {
                compare_exact(*dot_a, *norm_a, *dot_b, *norm_b)
            }
            // One router never mixes modes.
            (Self::Float(_), Self::Exact { .. }) => Ordering::Less,
            (Self::Exact { .. }, Self::Float(_)) => Ordering::Greater,
        }
    }
}

/// Compares `dot_a / sqrt(norm_a)` with `dot_b / sqrt(norm_b)` exactly.
///
/// Signs first; then `dot_a² · norm_b` against `dot_b² · norm_a`. With `|dot| < 2^41` and
/// `norm < 2^37`, each product stays below `2^119`, inside `i128`.
fn compare_exact(dot_a: i64, norm_a: i64, dot_b: i64, norm_b: i64) -> Ordering {
    let sign_a = dot_a.signum();
    let sign_b = dot_b.signum();
    if sign_a != sign_b {
        return sign_a.cmp(&sign_b);
    }
    let left = i128::from(dot_a) * i128::from(dot_a) * i128::from(norm_b);
    let right = i128::from(dot_b) * i128::from(dot_b) * i128::from(norm_a);
    if sign_a >= 0 { left.cmp(&right) } else { right.cmp(&left) }
}

/// The tie key of (signal id, agent): the first 8 bytes of
/// `DomainHasher("sos-identity/tie/v1").field(signal id).str_field(agent)`. Lower wins.
fn tie_key(signal: &[u8; 16], agent: &AgentName) -> u64 {
    let mut hasher = DomainHasher::new("sos-identity/tie/v1");
    let _ = hasher.field(signal);
    // Names are at most 256 bytes.
    let _ = hasher.str_field(agent.as_str());
    let digest = hasher.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

impl ResonanceRouter {
    /// An empty router.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `epsilon` is not in `(0, 16]`.
    pub fn new(config: RouterConfig) -> Result<Self> {
        if !(config.epsilon > 0.0 && config.epsilon <= 16.0) {
            return Err(Error::InvalidConfig { reason: "epsilon must be in (0, 16]" });
        }
        if !(1..=64).contains(&config.threads) {
            return Err(Error::InvalidConfig { reason: "threads must be in 1..=64" });
        }
        Ok(Self {
            config,
            names: Vec::new(),
            index: HashMap::new(),
            blocks: Vec::new(),
            norms: Vec::new(),
            loads: Vec::new(),
            total_load: 0,
            subjects: HashMap::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The number of agents.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the router holds no agent.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Adds an agent.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateAgent`] when the name is already present.
    pub fn add(&mut self, name: AgentName, vector: IdentityVector) -> Result<()> {
        if self.index.contains_key(&name) {
            return Err(Error::DuplicateAgent { name: name.into_string() });
        }
        let slot = self.names.len();
        let r = vector.r();
        if slot.is_multiple_of(LANES) {
            self.blocks.push(Block::EMPTY);
        }
        let norm: i64 = r.iter().map(|value| i64::from(*value) * i64::from(*value)).sum();
        let block = &mut self.blocks[slot / LANES];
        for (dimension, u) in vector.u().iter().enumerate() {
            // `h = u − 32768` in two's complement: the same bits as `u` with the top bit flipped.
            block.halves[dimension][slot % LANES] = (u ^ 0x8000) as i16;
        }
        // 16 odd components: the norm is at least 4, never zero.
        block.inverse_norms[slot % LANES] = (1.0 / (norm as f64).sqrt()) as f32;
        self.norms.push(norm);
        self.loads.push(0);
        self.index.insert(name.clone(), slot);
        self.names.push(name);
        Ok(())
    }

    /// Copies the lane of `from` into the lane of `to` (`from`'s lane is then cleared).
    fn move_lane(&mut self, from: usize, to: usize) {
        let source = self.blocks[from / LANES];
        let target = &mut self.blocks[to / LANES];
        for dimension in 0..DIMENSIONS {
            target.halves[dimension][to % LANES] = source.halves[dimension][from % LANES];
        }
        target.inverse_norms[to % LANES] = source.inverse_norms[from % LANES];
    }

    /// The exact `r` view of the agent in `slot`, recovered from its 16-bit halves.
    fn r_of(&self, slot: usize) -> [i32; DIMENSIONS] {
        let block = &self.blocks[slot / LANES];
        std::array::from_fn(|dimension| 2 * i32::from(block.halves[dimension][slot % LANES]) + 1)
    }

    /// The exact score of the agent in `slot`.
    fn exact_score(&self, slot: usize, signal: &SignalVector) -> Score {
        Score::Exact { dot: exact_dot(&self.r_of(slot), signal), norm: self.norms[slot] }
    }

    /// The float score of the agent in `slot`.
    fn float_score(&self, slot: usize, weights: &Weights) -> f32 {
        block_scores(&self.blocks[slot / LANES], weights)[slot % LANES]
    }

    /// Removes an agent (its load leaves with it). The last agent moves into its slot.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownAgent`] when no agent has this name.
    pub fn remove(&mut self, name: &AgentName) -> Result<()> {
        let Some(slot) = self.index.remove(name) else {
            return Err(Error::UnknownAgent { name: name.as_str().to_owned() });
        };
        let last = self.names.len() - 1;
        self.total_load -= self.loads[slot];
        if slot != last {
            self.move_lane(last, slot);
            self.norms[slot] = self.norms[last];
            self.loads[slot] = self.loads[last];
            self.names.swap(slot, last);
            self.index.insert(self.names[slot].clone(), slot);
        }
        self.names.pop();
        self.norms.pop();
        self.loads.pop();
        // Clear the vacated lane so the padding of the last block stays zero.
        let block = &mut self.blocks[last / LANES];
        for row in &mut block.halves {
            row[last % LANES] = 0;
        }
        block.inverse_norms[last % LANES] = 0.0;
        if last.is_multiple_of(LANES) {
            self.blocks.pop();
        }
        self.subjects.retain(|_, agent| agent != name);
        Ok(())
    }

    /// The current load of an agent.
    pub fn load(&self, name: &AgentName) -> Option<u64> {
        self.index.get(name).map(|slot| self.loads[*slot])
    }

    /// The loads of all agents, in no particular order.
    pub fn loads(&self) -> &[u64] {
        &self.loads
    }

    /// Marks one signal of `name` as handled, lowering its load.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownAgent`] when no agent has this name.
    pub fn complete(&mut self, name: &AgentName) -> Result<()> {
        let slot =
            *self.index.get(name).ok_or_else(|| Error::UnknownAgent { name: name.as_str().to_owned() })?;
        if self.loads[slot] > 0 {
            self.loads[slot] -= 1;
            self.total_load -= 1;
        }
        Ok(())
    }

    /// `Greater` when `a` ranks before `b`: higher score, then lower tie key.
    fn rank_order(&self, id: &[u8; 16], a: (Score, usize), b: (Score, usize)) -> Ordering {
        match a.0.compare(&b.0) {
            Ordering::Equal => tie_key(id, &self.names[b.1]).cmp(&tie_key(id, &self.names[a.1])),
            other => other,
        }
    }

    /// Inserts `candidate` into `best` (best first, at most `k` long) if it ranks high enough.
    fn consider(&self, id: &[u8; 16], k: usize, candidate: (Score, usize), best: &mut Vec<(Score, usize)>) {
        if best.len() == k {
            let Some(worst) = best.last() else { return };
            if self.rank_order(id, candidate, *worst) != Ordering::Greater {
                return;
            }
            best.pop();
        }
        // Binary search: `best` is sorted best first, so the candidate goes before the first held
        // entry it outranks.
        let position = best.partition_point(|held| self.rank_order(id, candidate, *held) == Ordering::Less);
        best.insert(position, candidate);
    }

    /// The best `k` of the agents in blocks `blocks`, best first: one pass, keeping only a
    /// sorted list of `k` (no sort of all scores).
    ///
    /// Both modes run the same float scan over the 16-bit blocks. The float mode ranks by the
    /// float scores; the exact mode ranks by exact scores, and uses the float scores only to skip
    /// agents that cannot reach its top k (see [`FLOAT_SCORE_ERROR`]).
    fn scan(
        &self,
        signal: &SignalVector,
        weights: &Weights,
        id: &[u8; 16],
        k: usize,
        blocks: std::ops::Range<usize>,
    ) -> Vec<(Score, usize)> {
        let mut best: Vec<(Score, usize)> = Vec::with_capacity(k + 1);
        let exact = self.config.mode == ScoreMode::Exact;
        // No agent whose float score is below this can enter the top k; a plain local, so the
        // hot loop is multiply-adds, a maximum and one comparison per block of 8.
        let mut threshold = f32::NEG_INFINITY;
        for block_index in blocks {
            let scores = block_scores(&self.blocks[block_index], weights);
            let block_best = scores.iter().fold(f32::NEG_INFINITY, |max, score| max.max(*score));
            if block_best < threshold {
                continue;
            }
            let base = block_index * LANES;
            let lanes = LANES.min(self.names.len() - base);
            for (lane, score) in scores.iter().take(lanes).enumerate() {
                if *score < threshold {
                    continue;
                }
                let slot = base + lane;
                let candidate = if exact { self.exact_score(slot, signal) } else { Score::Float(*score) };
                self.consider(id, k, (candidate, slot), &mut best);
                if best.len() == k
                    && let Some((worst, worst_slot)) = best.last()
                {
                    threshold = match worst {
                        Score::Float(worst) => *worst,
                        // The worst held agent's exact cosine is at least its float score minus
                        // the bound; a candidate's float score can exceed its own cosine by the
                        // bound too.
                        Score::Exact { .. } => {
                            self.float_score(*worst_slot, weights) - (2.0 * FLOAT_SCORE_ERROR + f32::EPSILON)
                        }
                    };
                }
            }
        }
        best
    }

    /// Slots of the best `k` agents, best first; split over [`RouterConfig::threads`] scoped
    /// threads for large routers, with the per-chunk lists merged.
    fn top_slots(&self, signal: &SignalVector, id: &[u8; 16], k: usize) -> Vec<(Score, usize)> {
        let k = k.min(self.names.len());
        if k == 0 {
            return Vec::new();
        }
        let weights = signal.weights();
        let threads = self.config.threads;
        if threads <= 1 || self.names.len() < PARALLEL_MIN_AGENTS {
            return self.scan(signal, &weights, id, k, 0..self.blocks.len());
        }
        let per_thread = self.blocks.len().div_ceil(threads);
        let lists: Vec<Vec<(Score, usize)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|chunk| {
                    let blocks = chunk * per_thread..((chunk + 1) * per_thread).min(self.blocks.len());
                    let weights = &weights;
                    scope.spawn(move || self.scan(signal, weights, id, k, blocks))
                })
                .collect();
            // A scan only does arithmetic on owned data and cannot panic; were one to, the
            // panic is re-raised here rather than hidden.
            handles
                .into_iter()
                .map(|handle| handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        let mut best = Vec::with_capacity(k + 1);
        for candidate in lists.into_iter().flatten() {
            self.consider(id, k, candidate, &mut best);
        }
        best
    }

    /// The best agent below `capacity` and how many better-ranked agents are at capacity: the
    /// slow path of bounded load, when every agent of the first walk is full. Two passes over
    /// the agents, no ranking of all of them.
    fn best_with_room(&self, signal: &SignalVector, id: &[u8; 16], capacity: u64) -> Option<(usize, usize)> {
        let weights = signal.weights();
        let score = |slot: usize| match self.config.mode {
            ScoreMode::Float => Score::Float(self.float_score(slot, &weights)),
            ScoreMode::Exact => self.exact_score(slot, signal),
        };
        let mut chosen: Option<(Score, usize)> = None;
        for slot in (0..self.names.len()).filter(|slot| self.loads[*slot] < capacity) {
            let candidate = (score(slot), slot);
            if chosen.is_none_or(|held| self.rank_order(id, candidate, held) == Ordering::Greater) {
                chosen = Some(candidate);
            }
        }
        let chosen = chosen?;
        let skipped = (0..self.names.len())
            .filter(|slot| self.loads[*slot] >= capacity)
            .filter(|slot| self.rank_order(id, (score(*slot), *slot), chosen) == Ordering::Greater)
            .count();
        Some((chosen.1, skipped))
    }

    fn cosine(&self, slot: usize, signal: &SignalVector) -> f64 {
        let dot = exact_dot(&self.r_of(slot), signal) as f64;
        dot / ((self.norms[slot] as f64).sqrt() * (signal.norm_squared() as f64).sqrt())
    }

    /// The best `k` agents for `signal`, ignoring load. Ties are broken by the hash of
    /// (`signal_id`, agent name), never by position.
    pub fn top_k(&self, signal: &SignalVector, signal_id: [u8; 16], k: usize) -> Vec<Candidate> {
        self.top_slots(signal, &signal_id, k)
            .into_iter()
            .map(|(_, slot)| Candidate { agent: self.names[slot].clone(), score: self.cosine(slot, signal) })
            .collect()
    }

    fn capacity(&self) -> u64 {
        match self.config.load {
            LoadPolicy::Argmax => u64::MAX,
            LoadPolicy::Bounded => {
                let agents = self.names.len().max(1) as f64;
                let bound = ((1.0 + self.config.epsilon) * (self.total_load as f64 + 1.0) / agents).ceil();
                bound.max(1.0) as u64
            }
        }
    }

    fn subject_key(subject: &str) -> Option<[u8; 32]> {
        if subject.is_empty() {
            return None;
        }
        let mut hasher = DomainHasher::new("sos-identity/subject/v1");
        // Subjects are bounded by the signal's limits, far below 4 GiB.
        let _ = hasher.str_field(subject);
        Some(hasher.finish().to_bytes())
    }

    /// Decides where a signal goes, without changing anything.
    fn decide(
        &self,
        signal: &SignalVector,
        id: &[u8; 16],
        subject: Option<&[u8; 32]>,
    ) -> Result<(usize, AppliedRule, u64)> {
        if self.names.is_empty() {
            return Err(Error::NoAgents);
        }
        let capacity = self.capacity();
        if let Some(key) = subject
            && let Some(agent) = self.subjects.get(key)
            && let Some(slot) = self.index.get(agent)
            && self.loads[*slot] < capacity
        {
            return Ok((*slot, AppliedRule::Sticky, capacity));
        }
        // Most signals find room among the first few; only when all of them are full does the
        // walk go on, as one pass for the best agent with room instead of a wider ranking.
        let ranked = self.top_slots(signal, id, 32);
        for (skipped, (_, slot)) in ranked.iter().enumerate() {
            if self.loads[*slot] < capacity {
                let rule = if skipped == 0 { AppliedRule::Best } else { AppliedRule::Overflow { skipped } };
                return Ok((*slot, rule, capacity));
            }
        }
        match self.best_with_room(signal, id, capacity) {
            Some((slot, skipped)) => Ok((slot, AppliedRule::Overflow { skipped }, capacity)),
            // Unreachable: some agent is at or below the mean load, which is below capacity.
            None => {
                let slot = ranked.first().map_or(0, |(_, slot)| *slot);
                Ok((slot, AppliedRule::Overflow { skipped: 0 }, capacity))
            }
        }
    }

    /// Routes a signal through `profile`, raising the chosen agent's load by one.
    ///
    /// # Errors
    ///
    /// [`Error::NoAgents`] when the router is empty.
    pub fn route(&mut self, signal: &Signal, profile: &dyn SignalProfile) -> Result<Routed> {
        let vector = profile.profile(signal);
        self.route_vector(&vector, signal.id(), signal.subject())
    }

    /// Routes an already profiled signal. `subject` drives stickiness (empty: none).
    ///
    /// # Errors
    ///
    /// [`Error::NoAgents`] when the router is empty.
    pub fn route_vector(&mut self, signal: &SignalVector, id: SignalId, subject: &str) -> Result<Routed> {
        let id_bytes = *id.as_uuid().as_bytes();
        // The subject is hashed once per route, and only when stickiness is on.
        let subject_key = if self.config.sticky { Self::subject_key(subject) } else { None };
        let (slot, rule, capacity) = self.decide(signal, &id_bytes, subject_key.as_ref())?;
        self.loads[slot] += 1;
        self.total_load += 1;
        if let Some(key) = subject_key {
            if self.subjects.len() >= self.config.max_sticky_subjects && !self.subjects.contains_key(&key) {
                self.subjects.clear();
            }
            self.subjects.insert(key, self.names[slot].clone());
        }
        Ok(Routed { agent: self.names[slot].clone(), score: self.cosine(slot, signal), rule, capacity })
    }

    /// Explains where `signal` would go now: the top `k` with scores, per-dimension
    /// contributions and loads, and the decision with the rule that applied. Changes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NoAgents`] when the router is empty.
    pub fn explain(&self, signal: &Signal, profile: &dyn SignalProfile, k: usize) -> Result<Explanation> {
        let vector = profile.profile(signal);
        let id_bytes = *signal.id().as_uuid().as_bytes();
        let subject_key = if self.config.sticky { Self::subject_key(signal.subject()) } else { None };
        let (slot, rule, capacity) = self.decide(&vector, &id_bytes, subject_key.as_ref())?;
        let signal_norm = (vector.norm_squared() as f64).sqrt();
        let candidates = self
            .top_slots(&vector, &id_bytes, k)
            .into_iter()
            .map(|(_, slot)| {
                let agent_norm = (self.norms[slot] as f64).sqrt();
                let r = self.r_of(slot);
                let contributions: [f64; DIMENSIONS] = std::array::from_fn(|d| {
                    f64::from(r[d]) * f64::from(vector.0[d]) / (agent_norm * signal_norm)
                });
                ExplainedCandidate {
                    agent: self.names[slot].clone(),
                    score: self.cosine(slot, &vector),
                    contributions,
                    load: self.loads[slot],
                }
            })
            .collect();
        let decision =
            Routed { agent: self.names[slot].clone(), score: self.cosine(slot, &vector), rule, capacity };
        Ok(Explanation { candidates, decision })
    }

    /// A plain sum over every byte a scan reads (the 16-bit halves, summed with wrapping
    /// `i16` adds, and the `f32` inverse norms): the memory-bandwidth bound a full scan is
    /// measured against in the benchmarks.
    pub fn bandwidth_probe(&self) -> f64 {
        // One accumulator per value of a block, added element-wise block after block: the
        // lightest loop over these bytes (vertical `i16` and `f32` adds).
        let mut halves = [[0i16; LANES]; DIMENSIONS];
        let mut norms = [0.0f32; LANES];
        for block in &self.blocks {
            for (sums, row) in halves.iter_mut().zip(&block.halves) {
                for lane in 0..LANES {
                    sums[lane] = sums[lane].wrapping_add(row[lane]);
                }
            }
            for (sum, value) in norms.iter_mut().zip(&block.inverse_norms) {
                *sum += *value;
            }
        }
        halves.iter().flatten().map(|value| f64::from(*value)).sum::<f64>()
            + norms.iter().map(|value| f64::from(*value)).sum::<f64>()
    }
}

/// The float scores of one block's 8 agents: `(c + Σ_d h_d·w_d) / |r|`, each lane summed in
/// dimension order (the order [`FLOAT_SCORE_ERROR`] assumes).
#[inline]
fn block_scores(block: &Block, weights: &Weights) -> [f32; LANES] {
    let mut sums = [weights.constant; LANES];
    for (row, weight) in block.halves.iter().zip(&weights.doubled) {
        for (sum, half) in sums.iter_mut().zip(row) {
            *sum += f32::from(*half) * weight;
        }
    }
    for (sum, inverse_norm) in sums.iter_mut().zip(&block.inverse_norms) {
        *sum *= inverse_norm;
    }
    sums
}

fn exact_dot(r: &[i32; DIMENSIONS], signal: &SignalVector) -> i64 {
    r.iter().zip(signal.0.iter()).map(|(a, s)| i64::from(*a) * i64::from(*s)).sum()
}

#[cfg(test)]
mod tests;
