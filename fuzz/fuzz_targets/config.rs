//! Arbitrary text as a plugin configuration (`Runtime::from_json`) and as an asset file
//! (`understudy_matcher::parse_asset_file`).
//!
//! Properties: never panics; a configuration that parses serializes back to one that parses equal (the CLI
//! writes what the filter reads); an asset file that parses re-serializes to one that parses equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_matcher::{parse_asset_file, PluginConfig, Runtime};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Runtime::from_json(&text);
    if let Ok(cfg) = PluginConfig::from_json(&text) {
        let written = serde_json::to_string(&cfg).expect("a parsed config serializes");
        let back = PluginConfig::from_json(&written).expect("a written config parses");
        assert_eq!(back, cfg, "config changed through a write/read round trip");
    }
    if let Ok(assets) = parse_asset_file(&text, "fuzz.json") {
        let only: Vec<_> = assets.iter().map(|(_, a)| a).collect();
        let written = serde_json::to_string(&only).expect("parsed assets serialize");
        let back = parse_asset_file(&written, "fuzz.json").expect("written assets parse");
        assert_eq!(back.len(), assets.len());
        for ((_, a), (_, b)) in assets.iter().zip(&back) {
            assert_eq!(a, b, "asset changed through a write/read round trip");
        }
    }
});
