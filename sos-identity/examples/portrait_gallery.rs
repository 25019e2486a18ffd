//! Writes a contact sheet of 64 portraits (SVG and PNG) and measures distinctness.
//!
//! ```text
//! cargo run --release -p sos-identity --all-features --example portrait_gallery -- [OUT_DIR] [AGENTS]
//! ```
//!
//! `OUT_DIR` defaults to `sos-identity/docs`; `AGENTS` (default 10000) is how many agents are
//! rendered to 16×16 thumbnails to count identical portraits and find the closest pair (mean
//! per-pixel ΔE in OKLab).

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Context as _;
use resvg::{tiny_skia, usvg};
use sos_identity::{IdentityVector, Portrait};

const NAMES: [&str; 16] = [
    "ada",
    "grace",
    "alan",
    "edsger",
    "barbara",
    "donald",
    "frances",
    "john",
    "margaret",
    "ken",
    "radia",
    "tim",
    "hedy",
    "claude",
    "katherine",
    "dennis",
];
const ROLES: [&str; 4] = ["researcher", "operator", "analyst", "steward"];

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "sos-identity/docs".to_owned()));
    let agents: usize = args
        .next()
        .map(|text| text.parse())
        .transpose()
        .context("AGENTS must be a number")?
        .unwrap_or(10_000);
    std::fs::create_dir_all(&out)?;

    // The contact sheet: 8 × 8 portraits, 128 px each with 16 px gutters.
    let cell = 144;
    let side = 8 * cell + 16;
    let mut sheet = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{side}\" height=\"{side}\" viewBox=\"0 0 {side} {side}\">\
         <rect width=\"{side}\" height=\"{side}\" fill=\"#f6f5f2\"/>"
    );
    let mut pixmap = tiny_skia::Pixmap::new(side, side).context("sheet size")?;
    pixmap.fill(tiny_skia::Color::from_rgba8(0xf6, 0xf5, 0xf2, 0xff));
    for index in 0..64u32 {
        let name = NAMES[index as usize % 16];
        let role = ROLES[index as usize / 16];
        let svg = Portrait::of(&IdentityVector::derive(name, role)?).into_svg();
        let (x, y) = (16 + (index % 8) * cell, 16 + (index / 8) * cell);
        // Each portrait's ids get a prefix so that 64 of them can share one document.
        let prefix = format!("p{index}");
        let inner = svg
            .replace("id=\"", &format!("id=\"{prefix}"))
            .replace("href=\"#", &format!("href=\"#{prefix}"))
            .replace("url(#", &format!("url(#{prefix}"))
            .replacen("<svg ", &format!("<svg x=\"{x}\" y=\"{y}\" "), 1);
        sheet.push_str(&format!("<g><title>{name} ({role})</title>{inner}</g>"));
        let tree = usvg::Tree::from_str(&svg, &usvg::Options::default())?;
        resvg::render(&tree, tiny_skia::Transform::from_translate(x as f32, y as f32), &mut pixmap.as_mut());
    }
    sheet.push_str("</svg>");
    std::fs::write(out.join("gallery.svg"), &sheet)?;
    pixmap.save_png(out.join("gallery.png"))?;
    println!("wrote {} and gallery.png", out.join("gallery.svg").display());

    // Distinctness among `agents` portraits rendered to 16×16 thumbnails.
    let started = std::time::Instant::now();
    let mut thumbnails = Vec::with_capacity(agents);
    let mut identical = HashSet::new();
    let mut largest = 0;
    for index in 0..agents {
        let svg = Portrait::of(&IdentityVector::derive(&format!("agent-{index}"), "worker")?).into_svg();
        largest = largest.max(svg.len());
        let tree = usvg::Tree::from_str(&svg, &usvg::Options::default())?;
        let mut thumb = tiny_skia::Pixmap::new(16, 16).context("thumbnail size")?;
        thumb.fill(tiny_skia::Color::WHITE);
        resvg::render(&tree, tiny_skia::Transform::from_scale(0.125, 0.125), &mut thumb.as_mut());
        identical.insert(thumb.data().to_vec());
        let lab: Vec<[f32; 3]> = thumb
            .pixels()
            .iter()
            .map(|pixel| {
                let colour = pixel.demultiply();
                oklab([colour.red(), colour.green(), colour.blue()])
            })
            .collect();
        thumbnails.push(lab);
    }
    let mut minimum = f32::MAX;
    let mut closest = (0, 0);
    for (index, a) in thumbnails.iter().enumerate() {
        for (offset, b) in thumbnails[index + 1..].iter().enumerate() {
            // Stop summing a pair as soon as it cannot beat the closest so far.
            let bound = minimum * 256.0;
            let mut total = 0.0f32;
            for (chunk_a, chunk_b) in a.chunks(32).zip(b.chunks(32)) {
                total += chunk_a.iter().zip(chunk_b).map(|(x, y)| delta(x, y)).sum::<f32>();
                if total >= bound {
                    break;
                }
            }
            if total < bound {
                minimum = total / 256.0;
                closest = (index, index + 1 + offset);
            }
        }
    }
    println!(
        "{agents} portraits: {} identical thumbnails, minimum mean per-pixel ΔE_OK {minimum:.4} (goal ≥ 0.02, one JND) \
         between agent-{} and agent-{}; largest SVG {largest} bytes (limit 4096); {:.1} s",
        agents - identical.len(),
        closest.0,
        closest.1,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn delta(x: &[f32; 3], y: &[f32; 3]) -> f32 {
    ((x[0] - y[0]).powi(2) + (x[1] - y[1]).powi(2) + (x[2] - y[2]).powi(2)).sqrt()
}

fn oklab(rgb: [u8; 3]) -> [f32; 3] {
    let linear = rgb.map(|channel| {
        let value = f32::from(channel) / 255.0;
        if value <= 0.04045 { value / 12.92 } else { ((value + 0.055) / 1.055).powf(2.4) }
    });
    let [r, g, b] = linear;
    let l = (0.412_221_46 * r + 0.536_332_55 * g + 0.051_445_995 * b).cbrt();
    let m = (0.211_903_5 * r + 0.680_699_5 * g + 0.107_396_96 * b).cbrt();
    let s = (0.088_302_46 * r + 0.281_718_85 * g + 0.629_978_7 * b).cbrt();
    [
        0.210_454_26 * l + 0.793_617_8 * m - 0.004_072_047 * s,
        1.977_998_5 * l - 2.428_592_2 * m + 0.450_593_7 * s,
        0.025_904_037 * l + 0.782_771_77 * m - 0.808_675_77 * s,
    ]
}
