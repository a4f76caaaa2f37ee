//! Criterion benchmarks for the record module. (Being built.)

fn main() {}
