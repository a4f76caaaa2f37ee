//! Criterion benchmarks for the mask module. (Being built.)

fn main() {}
