//! Benchmark contender (skeleton, to be written): the trivial wasm filter.
