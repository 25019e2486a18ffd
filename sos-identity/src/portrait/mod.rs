//! Deterministic SVG portraits: the same vector gives the same bytes on every platform.
//!
//! Everything is integer or plain IEEE arithmetic (no trigonometry, no locale, no `{:?}` of
//! floats): ring positions are rotations written as fixed two-decimal angles, colours are HSL
//! converted with `+ − × ÷` only and rounded to bytes.

use std::fmt::Write as _;

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use sos_core::DomainHasher;

use crate::traits::{Geometry, Texture, Traits};
use crate::vector::IdentityVector;

/// The version of the portrait drawing specification (`docs/identity.md`, section 3).
///
/// The identity vector never changes; the picture drawn from it may, and only with a new version
/// here and new golden files. Version 1 tinted half the background in the accent hue at the
/// background's lightness and drew smaller elements; among 10,000 agents its closest pair of
/// 16×16 thumbnails differed by 0.8 of a just-noticeable difference. Version 2 gives the tinted
/// half its own hue (16 offsets) and depth (2 levels) from the seeded split feature and draws the
/// elements and the centre glyph about 20 % larger, so the closest pair among the same 10,000
/// differs by more than one just-noticeable difference.
pub const PORTRAIT_VERSION: u32 = 2;

/// The domain tag of the portrait's ChaCha20 seed: `DomainHasher(PORTRAIT_SEED_TAG).field(vector)`.
pub const PORTRAIT_SEED_TAG: &str = "sos-identity/portrait-seed/v1";

/// The number of ChaCha `u32` draws each portrait feature consumes, whether it uses them or not,
/// so that adding a feature at the end never reshuffles the others.
pub const DRAWS_PER_FEATURE: usize = 2;

/// A portrait as SVG text (at most 4 KB; 128×128 px, view box 64×64).
///
/// A portrait is a recognition aid for people, not authentication: anyone can draw any picture.
/// To check an agent, look its name up in the registry and compare vectors.
///
/// ```
/// use sos_identity::{IdentityVector, Portrait};
///
/// let vector = IdentityVector::derive("alice", "researcher")?;
/// let portrait = Portrait::of(&vector);
/// assert!(portrait.as_svg().starts_with("<svg"));
/// assert!(portrait.as_svg().len() <= 4096);
/// assert_eq!(portrait, Portrait::of(&vector));
/// # Ok::<(), sos_identity::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Portrait {
    svg: String,
}

impl Portrait {
    /// The largest portrait, in bytes.
    pub const MAX_BYTES: usize = 4096;

    /// Draws the portrait of `vector`.
    pub fn of(vector: &IdentityVector) -> Self {
        let mut svg = String::with_capacity(3072);
        write_svg(vector, &mut svg);
        Self { svg }
    }

    /// The SVG text.
    pub fn as_svg(&self) -> &str {
        &self.svg
    }

    /// Consumes the portrait and returns its SVG text.
    pub fn into_svg(self) -> String {
        self.svg
    }
}

/// Formats hundredths as a fixed two-decimal number: 12345 → `123.45`, −5 → `-0.05`.
struct Fixed(i64);

impl std::fmt::Display for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", magnitude / 100, magnitude % 100)
    }
}

/// An sRGB colour as `#rrggbb`.
#[derive(Clone, Copy)]
struct Rgb([u8; 3]);

impl std::fmt::Display for Rgb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{:02x}{:02x}{:02x}", self.0[0], self.0[1], self.0[2])
    }
}

/// HSL to sRGB bytes, hue in degrees `[0, 360)`, saturation and lightness in `[0, 1]`.
fn hsl(hue: f64, saturation: f64, lightness: f64) -> Rgb {
    let chroma = (1.0 - (2.0 * lightness - 1.0).abs()) * saturation;
    let sector = hue / 60.0;
    let x = chroma * (1.0 - ((sector % 2.0) - 1.0).abs());
    let (r, g, b) = match sector as u32 {
        0 => (chroma, x, 0.0),
        1 => (x, chroma, 0.0),
        2 => (0.0, chroma, x),
        3 => (0.0, x, chroma),
        4 => (x, 0.0, chroma),
        _ => (chroma, 0.0, x),
    };
    let m = lightness - chroma / 2.0;
    // Values are within [0, 1] by construction; the clamp guards the last ulp.
    let byte = |value: f64| ((value + m).clamp(0.0, 1.0) * 255.0).round() as u8;
    Rgb([byte(r), byte(g), byte(b)])
}

/// Shape outlines at unit size, centred on the origin.
fn shape(geometry: Geometry) -> &'static str {
    match geometry {
        Geometry::Circle => "<circle r=\"1\"/>",
        Geometry::Square => "<path d=\"M-.8-.8h1.6v1.6h-1.6z\"/>",
        Geometry::Triangle => "<path d=\"M0-1L.87.5H-.87z\"/>",
        Geometry::Diamond => "<path d=\"M0-1L1 0L0 1L-1 0z\"/>",
        Geometry::Hexagon => "<path d=\"M0-1L.87-.5V.5L0 1L-.87.5V-.5z\"/>",
        Geometry::Star => {
            "<path d=\"M0-1L.24-.32L.95-.31L.38.12L.59.81L0 .4L-.59.81L-.38.12L-.95-.31L-.24-.32z\"/>"
        }
        Geometry::Petal => "<path d=\"M0-1C.6-.4.6.4 0 1C-.6.4-.6-.4 0-1z\"/>",
        Geometry::Cross => "<path d=\"M-.3-1h.6v.7h.7v.6h-.7v.7h-.6v-.7h-.7v-.6h.7z\"/>",
    }
}

/// Hue offsets of the accent, by accent index.
const ACCENT_OFFSETS: [f64; 8] = [180.0, 150.0, 210.0, 120.0, 240.0, 90.0, 270.0, 60.0];
/// (background lightness, foreground lightness) by contrast level.
const CONTRAST: [(f64, f64); 4] = [(0.88, 0.48), (0.93, 0.36), (0.24, 0.66), (0.13, 0.78)];
/// Ring radii in hundredths, outermost first.
const RING_RADII: [i64; 4] = [2150, 1550, 1000, 550];
/// Element sizes in hundredths by scale level.
const ELEMENT_SIZES: [i64; 4] = [400, 480, 560, 640];
/// The tinted half of the background, by split feature: top, left, upper-left, upper-right,
/// bottom, right, lower-right and lower-left.
const SPLITS: [&str; 8] = [
    "M0 0H64V32H0z",
    "M0 0H32V64H0z",
    "M0 0H64L0 64z",
    "M0 0H64V64z",
    "M0 32H64V64H0z",
    "M32 0H64V64H32z",
    "M64 0V64H0z",
    "M0 0L64 64H0z",
];
/// Hue offsets of the tinted half from the primary hue, by bits 4–7 of the split feature.
const TINT_OFFSETS: [f64; 16] = [
    180.0, 150.0, 210.0, 120.0, 240.0, 90.0, 270.0, 60.0, 30.0, 330.0, 0.0, 300.0, 45.0, 315.0, 135.0, 225.0,
];
/// How much darker (on light grounds) or lighter (on dark grounds) a deep tint is.
const TINT_DEPTH: f64 = 0.14;
/// Element growth in percent, by number of layers.
const RING_ROOM: [i64; 4] = [150, 120, 100, 90];
/// Centre glyph sizes in hundredths, by number of layers.
const GLYPH_SIZES: [i64; 4] = [1200, 900, 620, 380];
/// Corner radius of the frame, by frame feature.
const FRAME_CORNERS: [u32; 4] = [8, 32, 3, 16];

/// The fixed feature draws: feature `k` owns words `2k` and `2k + 1` of the ChaCha20 stream.
fn feature_draws(vector: &IdentityVector) -> [[u32; DRAWS_PER_FEATURE]; 5] {
    let mut hasher = DomainHasher::new(PORTRAIT_SEED_TAG);
    // A 32-byte field cannot exceed the u32 length limit.
    let _ = hasher.field(vector.as_bytes());
    let mut rng = ChaCha20Rng::from_seed(hasher.finish().to_bytes());
    std::array::from_fn(|_| std::array::from_fn(|_| rng.next_u32()))
}

fn write_svg(vector: &IdentityVector, svg: &mut String) {
    // Writing to a String cannot fail; the results are discarded on that invariant.
    let traits = Traits::of(vector).aesthetics;
    let [frame_draw, marks_draw, radius_draw, texture_draw, split_draw] = feature_draws(vector);

    let hue = f64::from(traits.hue_family) * 22.5;
    let accent_hue = (hue + ACCENT_OFFSETS[usize::from(traits.accent)]) % 360.0;
    let (background_lightness, foreground_lightness) = CONTRAST[usize::from(traits.contrast)];
    let background = hsl(hue, 0.42, background_lightness);
    let foreground = hsl(hue, 0.72, foreground_lightness);
    let accent = hsl(accent_hue, 0.80, 0.5 + (foreground_lightness - 0.5) * 0.6);
    let corner = FRAME_CORNERS[(frame_draw[0] % 4) as usize];

    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"128\" height=\"128\" viewBox=\"0 0 64 64\">\
         <defs><clipPath id=\"f\"><rect width=\"64\" height=\"64\" rx=\"{corner}\"/></clipPath>"
    );
    let order = i64::from(traits.symmetry);
    let layers = usize::from(traits.layers);
    // Fewer rings leave more room: elements grow by 150 %, 120 %, 100 % or 90 % for 1–4 rings.
    let base_size = ELEMENT_SIZES[usize::from(traits.scale)] * RING_ROOM[layers - 1] / 100;
    for (layer, ring_radius) in RING_RADII.iter().enumerate().take(layers) {
        // Jitter of 0 to 0.75 in steps of 0.25, from one byte of the radius draw per layer.
        let jitter = i64::from((radius_draw[0] >> (8 * layer)) & 3) * 25;
        let radius = ring_radius + jitter;
        let size = base_size * (100 - 15 * layer as i64) / 100;
        let fill = if layer % 2 == 0 { foreground } else { accent };
        let _ = write!(
            svg,
            "<g id=\"l{layer}\" fill=\"{fill}\" transform=\"translate(0 {})scale({})\">{}</g>",
            Fixed(-radius),
            Fixed(size),
            shape(traits.geometry)
        );
    }
    let mark_radius = 90 + i64::from(marks_draw[1] % 4) * 15;
    let _ =
        write!(svg, "<circle id=\"m\" cy=\"-29\" r=\"{}\" fill=\"{accent}\"/></defs>", Fixed(mark_radius));
    let _ = write!(svg, "<rect width=\"64\" height=\"64\" rx=\"{corner}\" fill=\"{background}\"/>");
    // Half of the background in the accent hue at the background's lightness: a large area
    // that varies with the accent (8) and the split direction (8), so that portraits sharing a
    // hue family and contrast still differ at thumbnail size.
    // The split feature's word: bits 0–2 the direction, bit 3 the depth, bits 4–7 the hue.
    let split_word = split_draw[0];
    let light = background_lightness > 0.5;
    let depth = if split_word >> 3 & 1 == 1 { if light { -TINT_DEPTH } else { TINT_DEPTH } } else { 0.0 };
    let tint_hue = (hue + TINT_OFFSETS[(split_word >> 4 & 15) as usize]) % 360.0;
    let tint = hsl(tint_hue, if light { 0.75 } else { 0.55 }, background_lightness + depth);
    let split = SPLITS[(split_word & 7) as usize];
    let _ = write!(svg, "<path clip-path=\"url(#f)\" fill=\"{tint}\" d=\"{split}\"/>");
    write_texture(svg, traits.texture, foreground, texture_draw[0]);
    svg.push_str("<g transform=\"translate(32 32)\">");
    // Rotation of the whole ring: eighths of one sector, in hundredths of a degree.
    let sector = 36000 / order;
    let rotation = sector * i64::from(traits.rotation) / 8;
    for layer in 0..layers {
        // Alternate layers sit half a sector apart, so rings interleave instead of stacking.
        let offset = rotation + if layer % 2 == 1 { sector / 2 } else { 0 };
        for element in 0..order {
            let angle = (36000 * element / order + offset) % 36000;
            let _ = write!(svg, "<use href=\"#l{layer}\" transform=\"rotate({})\"/>", Fixed(angle));
        }
    }
    // The glyph fills the room the rings leave: large when there is one ring, small with four.
    let glyph_size = GLYPH_SIZES[layers - 1];
    let glyph_fill = if layers % 2 == 1 { accent } else { foreground };
    let _ = write!(
        svg,
        "<g fill=\"{glyph_fill}\" transform=\"scale({})\">{}</g>",
        Fixed(glyph_size),
        shape(traits.glyph)
    );
    for mark in 0..16 {
        if marks_draw[0] >> mark & 1 == 1 {
            let _ = write!(svg, "<use href=\"#m\" transform=\"rotate({})\"/>", Fixed(mark * 2250 + 1125));
        }
    }
    svg.push_str("</g></svg>");
}

fn write_texture(svg: &mut String, texture: Texture, colour: Rgb, draw: u32) {
    let phase = i64::from(draw % 8);
    match texture {
        Texture::Solid => {}
        Texture::Stripes => {
            let _ = write!(
                svg,
                "<path clip-path=\"url(#f)\" stroke=\"{colour}\" stroke-width=\"2\" opacity=\".22\" d=\""
            );
            for step in 0..9 {
                let start = 16 * step + phase;
                let _ = write!(svg, "M0 {start}L{start} 0");
            }
            svg.push_str("\"/>");
        }
        Texture::Dots => {
            let _ = write!(svg, "<path fill=\"{colour}\" opacity=\".25\" d=\"");
            for row in 0..4 {
                for column in 0..4 {
                    let x = 8 + 16 * column + (phase % 4);
                    let y = 7 + 16 * row;
                    let _ = write!(svg, "M{x} {y}l1 1-1 1-1-1z");
                }
            }
            svg.push_str("\"/>");
        }
        Texture::Rings => {
            let _ = write!(
                svg,
                "<g clip-path=\"url(#f)\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" opacity=\".22\">"
            );
            for ring in 0..3 {
                let radius = 29 + 8 * ring + phase % 4;
                let _ = write!(svg, "<circle cx=\"32\" cy=\"32\" r=\"{radius}\"/>");
            }
            svg.push_str("</g>");
        }
    }
}

#[cfg(test)]
mod tests;
