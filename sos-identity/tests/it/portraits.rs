//! Portraits: golden bytes, validity under a real SVG parser, size, and distinctness.

use std::collections::HashSet;

use resvg::{tiny_skia, usvg};
use sos_identity::{IdentityVector, Portrait};

const GOLDEN: [(&str, &str, &str); 4] = [
    ("alice", "researcher", "alice-researcher.svg"),
    ("ops-bot-7", "on-call 🙂", "ops-bot-7.svg"),
    ("漢字", "翻訳者", "kanji.svg"),
    ("Zoë", "analyst", "zoe-analyst.svg"),
];

fn golden_path(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/golden").join(file)
}

/// Golden bytes pin the output across platforms and releases. `SOS_BLESS=1` rewrites them after a
/// deliberate, versioned change of the portrait specification.
#[test]
fn portraits_match_golden_bytes() {
    for (name, role, file) in GOLDEN {
        let svg = Portrait::of(&IdentityVector::derive(name, role).expect("valid")).into_svg();
        if std::env::var_os("SOS_BLESS").is_some() {
            std::fs::write(golden_path(file), &svg).expect("write golden file");
        }
        let golden = std::fs::read_to_string(golden_path(file)).expect("golden file present");
        assert_eq!(svg, golden, "{file} changed: portraits must be byte-identical forever");
    }
}

fn parse(svg: &str) -> usvg::Tree {
    usvg::Tree::from_str(svg, &usvg::Options::default())
        .unwrap_or_else(|error| panic!("invalid SVG: {error}\n{svg}"))
}

fn vector(index: usize) -> IdentityVector {
    IdentityVector::derive(&format!("agent-{index}"), "worker").expect("valid")
}

#[test]
fn portraits_parse_and_fit_in_four_kilobytes() {
    let mut largest = 0;
    for index in 0..300 {
        let svg = Portrait::of(&vector(index)).into_svg();
        largest = largest.max(svg.len());
        let tree = parse(&svg);
        assert_eq!(tree.size().width(), 128.0);
        assert!(tree.root().has_children());
        assert!(svg.is_ascii(), "no locale- or platform-dependent characters");
    }
    assert!(largest <= Portrait::MAX_BYTES, "largest portrait {largest} bytes");
}

/// Renders a portrait to a 16×16 thumbnail in OKLab.
fn thumbnail(svg: &str) -> Vec<[f32; 3]> {
    let tree = parse(svg);
    let mut pixmap = tiny_skia::Pixmap::new(16, 16).expect("non-zero size");
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(&tree, tiny_skia::Transform::from_scale(0.125, 0.125), &mut pixmap.as_mut());
    pixmap
        .pixels()
        .iter()
        .map(|pixel| {
            let colour = pixel.demultiply();
            oklab([colour.red(), colour.green(), colour.blue()])
        })
        .collect()
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

fn distance(a: &[[f32; 3]], b: &[[f32; 3]]) -> f32 {
    let total: f32 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x[0] - y[0]).powi(2) + (x[1] - y[1]).powi(2) + (x[2] - y[2]).powi(2)).sqrt())
        .sum();
    total / a.len() as f32
}

/// Distinct to the eye: no two of a sample render to the same thumbnail, and the closest pair
/// differs by at least one just-noticeable difference (ΔE_OK 0.02) per pixel on average. The
/// release-mode figure for 10,000 agents is in BENCHMARKS.md (example `portrait_gallery`).
#[test]
fn thumbnails_are_distinct() {
    let agents = 400;
    let thumbnails: Vec<Vec<[f32; 3]>> =
        (0..agents).map(|index| thumbnail(Portrait::of(&vector(index)).as_svg())).collect();
    let exact: HashSet<Vec<u32>> = thumbnails
        .iter()
        .map(|pixels| pixels.iter().flat_map(|lab| lab.map(f32::to_bits)).collect())
        .collect();
    assert_eq!(exact.len(), agents, "identical thumbnails among {agents}");
    let mut minimum = f32::MAX;
    let mut closest = (0, 0);
    for (index, a) in thumbnails.iter().enumerate() {
        for (offset, b) in thumbnails[index + 1..].iter().enumerate() {
            let between = distance(a, b);
            if between < minimum {
                minimum = between;
                closest = (index, index + 1 + offset);
            }
        }
    }
    eprintln!("minimum mean per-pixel ΔE_OK among {agents} thumbnails: {minimum:.4} (agents {closest:?})");
    assert!(minimum >= 0.02, "closest pair differs by only {minimum}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any 32 bytes, not only hash outputs, give a valid portrait within budget, drawn the same
    /// way twice.
    #[test]
    fn any_vector_gives_a_valid_bounded_portrait(bytes in proptest::prelude::any::<[u8; 32]>()) {
        let vector = IdentityVector::from_bytes(bytes);
        let svg = Portrait::of(&vector).into_svg();
        proptest::prop_assert!(svg.len() <= Portrait::MAX_BYTES);
        proptest::prop_assert_eq!(&svg, &Portrait::of(&vector).into_svg());
        parse(&svg);
    }
}
