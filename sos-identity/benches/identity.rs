//! Benchmarks of sos-identity (filled in below).

fn main() {}
