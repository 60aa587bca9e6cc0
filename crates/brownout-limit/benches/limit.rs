//! Benchmarks of the rate limiter (filled in below).

fn main() {}
