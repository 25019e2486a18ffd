//! Benchmarks of sos-audit (filled in below).

fn main() {}
