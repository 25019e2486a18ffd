use super::*;

#[test]
fn fixed_formatting_is_two_decimals() {
    assert_eq!(Fixed(12345).to_string(), "123.45");
    assert_eq!(Fixed(-5).to_string(), "-0.05");
    assert_eq!(Fixed(0).to_string(), "0.00");
    assert_eq!(Fixed(100).to_string(), "1.00");
}

#[test]
fn hsl_primaries() {
    assert_eq!(hsl(0.0, 1.0, 0.5).to_string(), "#ff0000");
    assert_eq!(hsl(120.0, 1.0, 0.5).to_string(), "#00ff00");
    assert_eq!(hsl(240.0, 1.0, 0.5).to_string(), "#0000ff");
    assert_eq!(hsl(0.0, 0.0, 1.0).to_string(), "#ffffff");
}

#[test]
fn worst_case_portrait_fits_the_budget() {
    // Every feature at its most expensive: 4 layers of 10 stars, all 16 marks, dots texture.
    let mut worst_size = 0;
    for seed in 0u32..2000 {
        let mut bytes = [0xffu8; 32];
        bytes[28..32].copy_from_slice(&seed.to_be_bytes());
        bytes[8] = 0x80; // u4: texture 2 (dots)
        worst_size = worst_size.max(Portrait::of(&IdentityVector::from_bytes(bytes)).as_svg().len());
    }
    assert!(worst_size <= Portrait::MAX_BYTES, "{worst_size} bytes");
}
