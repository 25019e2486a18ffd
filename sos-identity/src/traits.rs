//! The stable mapping from dimensions to aesthetic and behavioural traits.
//!
//! Every trait reads its own dimension (or dimensions) of the vector, so a host can rely on each
//! one independently and a later addition never reshuffles the others. The table is part of the
//! `sos-identity/v1` specification in `docs/identity.md`; changing it is a new version.

use serde::{Deserialize, Serialize};

use crate::vector::IdentityVector;

/// The geometric class of a portrait's elements (dimension 1) and of its centre glyph
/// (dimension 7): 8 classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Geometry {
    /// A circle.
    Circle,
    /// A square.
    Square,
    /// An upward triangle.
    Triangle,
    /// A square turned 45°.
    Diamond,
    /// A regular hexagon.
    Hexagon,
    /// A five-pointed star.
    Star,
    /// An elongated leaf shape.
    Petal,
    /// A plus-shaped cross.
    Cross,
}

impl Geometry {
    /// All classes, in index order.
    pub const ALL: [Self; 8] = [
        Self::Circle,
        Self::Square,
        Self::Triangle,
        Self::Diamond,
        Self::Hexagon,
        Self::Star,
        Self::Petal,
        Self::Cross,
    ];

    fn from_index(index: u16) -> Self {
        Self::ALL[usize::from(index) % 8]
    }
}

/// The fill texture of a portrait's background (dimension 4): 4 classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Texture {
    /// A flat fill.
    Solid,
    /// Diagonal stripes.
    Stripes,
    /// A grid of dots.
    Dots,
    /// Concentric rings.
    Rings,
}

impl Texture {
    /// All textures, in index order.
    pub const ALL: [Self; 4] = [Self::Solid, Self::Stripes, Self::Dots, Self::Rings];
}

/// How an agent prefers to phrase what it tells people (dimension 10): 4 classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommunicationStyle {
    /// Short, to the point.
    Concise,
    /// Context first, then the point.
    Narrative,
    /// Tables and figures over prose.
    Structured,
    /// Questions that lead the reader to the point.
    Socratic,
}

impl CommunicationStyle {
    /// All styles, in index order.
    pub const ALL: [Self; 4] = [Self::Concise, Self::Narrative, Self::Structured, Self::Socratic];
}

/// The aesthetic traits, read by the portrait and available to hosts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Aesthetics {
    /// Hue family, 0..16, from dimension 0 (`u0 >> 12`): families 22.5° apart.
    pub hue_family: u8,
    /// Geometry class of the ring elements, from dimension 1 (`u1 >> 13`).
    pub geometry: Geometry,
    /// Rotational symmetry order, 3..=10, from dimension 2 (`3 + (u2 >> 13)`).
    pub symmetry: u8,
    /// Contrast level, 0..4 (0 softest), from dimension 3 (`u3 >> 14`).
    pub contrast: u8,
    /// Background texture, from dimension 4 (`u4 >> 14`).
    pub texture: Texture,
    /// Accent hue relation, 0..8, from dimension 5 (`u5 >> 13`): an offset from the primary
    /// hue of 180°, 150°, 210°, 120°, 240°, 90°, 270° or 60°.
    pub accent: u8,
    /// Number of element rings, 1..=4, from dimension 6 (`1 + (u6 >> 14)`).
    pub layers: u8,
    /// Geometry class of the centre glyph, from dimension 7 (`u7 >> 13`).
    pub glyph: Geometry,
    /// Element scale level, 0..4, from dimension 8 (`u8 >> 14`).
    pub scale: u8,
    /// Rotation of the ring, in eighths of a symmetry sector (0..8), from dimension 9
    /// (`u9 >> 13`).
    pub rotation: u8,
}

/// The behavioural traits: parameters a host may use to give agents a character.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Behaviour {
    /// Communication style, from dimension 10 (`u10 >> 14`).
    pub communication: CommunicationStyle,
    /// Intervention frequency in `[0, 1)`: `p11`. 0 speaks up rarely, 1 often.
    pub intervention_frequency: f32,
    /// Formality in `[0, 1)`: `p12`. 0 casual, 1 formal.
    pub formality: f32,
    /// Weights of three host-defined domains (dimensions 13, 14, 15), `(p + 1/65536)`
    /// normalised to sum to 1. The host decides what domain 0, 1 and 2 mean.
    pub domain_weights: [f32; 3],
}

/// All traits of one vector.
///
/// ```
/// use sos_identity::{IdentityVector, Traits};
///
/// let traits = Traits::of(&IdentityVector::derive("alice", "researcher")?);
/// assert!((3..=10).contains(&traits.aesthetics.symmetry));
/// let sum: f32 = traits.behaviour.domain_weights.iter().sum();
/// assert!((sum - 1.0).abs() < 1e-5);
/// # Ok::<(), sos_identity::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Traits {
    /// What the portrait shows.
    pub aesthetics: Aesthetics,
    /// How the agent behaves.
    pub behaviour: Behaviour,
}

impl Traits {
    /// The traits of `vector`, by the table above.
    pub fn of(vector: &IdentityVector) -> Self {
        let u = vector.u();
        let p = vector.p();
        // Every shift leaves at most 4 bits, so the narrowing casts are lossless.
        let top = |value: u16, bits: u32| -> u8 { (value >> (16 - bits)) as u8 };
        let aesthetics = Aesthetics {
            hue_family: top(u[0], 4),
            geometry: Geometry::from_index(u[1] >> 13),
            symmetry: 3 + top(u[2], 3),
            contrast: top(u[3], 2),
            texture: Texture::ALL[usize::from(u[4] >> 14)],
            accent: top(u[5], 3),
            layers: 1 + top(u[6], 2),
            glyph: Geometry::from_index(u[7] >> 13),
            scale: top(u[8], 2),
            rotation: top(u[9], 3),
        };
        let raw = [p[13], p[14], p[15]].map(|value| value + 1.0 / 65536.0);
        let total: f32 = raw.iter().sum();
        let behaviour = Behaviour {
            communication: CommunicationStyle::ALL[usize::from(u[10] >> 14)],
            intervention_frequency: p[11],
            formality: p[12],
            domain_weights: raw.map(|value| value / total),
        };
        Self { aesthetics, behaviour }
    }
}
