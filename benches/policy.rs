//! Criterion benchmarks for the policy module. (Being built.)

fn main() {}
