//! Matcher micro-benchmarks inside Envoy's wasm VM (skeleton, to be written).
