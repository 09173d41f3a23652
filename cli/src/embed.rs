//! The bundle embedded in the filter's module (`understudy package --assets`, `understudy manifests
//! --embed`): one OCI image carries the filter and its assets (docs/store.md).
//!
//! A wasm module can't read its own custom sections at run time, so the bundle goes in as data: the filter
//! reserves a marker record (`filter/src/embedded.rs`: a 32-byte magic, then offset and length, both
//! `u32::MAX`); this module appends an active data segment holding the payload at the end of the module's
//! initial linear memory (page-aligned), raises the initial memory to cover it, and patches the record with
//! the payload's offset and length. Every other section is copied byte for byte, so the result is
//! deterministic: the same module and assets always give the same module (and OCI digests).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::value::RawValue;
use understudy_matcher::asset::{BundleOf, CanonicalBundleWriter};
use understudy_matcher::canonical::to_canonical;
use understudy_matcher::limits::EMBEDDED_BUNDLE_BYTES;
use understudy_matcher::{BundledAsset, EmbeddedOf, NormalizationConfig, EMBEDDED_FORMAT, EMBED_MARKER_MAGIC};
use wasm_encoder::{ConstExpr, DataCountSection, DataSection, MemorySection, MemoryType, Module, RawSection};
use wasmparser::{DataKind, Operator, Parser, Payload};

const PAGE: u64 = 65_536;
const MEMORY_SECTION: u8 = 5;
const DATA_SECTION: u8 = 11;
const DATA_COUNT_SECTION: u8 = 12;
/// The marker's offset and length before patching.
const UNSET: [u8; 8] = [0xff; 8];

/// A module's embedded bundle.
pub struct Embedded {
    /// The payload: [`EmbeddedOf`] JSON.
    pub payload: String,
    /// Assets in its bundle.
    pub count: usize,
    /// The normalization settings its keys were computed with.
    pub normalization: NormalizationConfig,
}

/// The payload `understudy package --assets DIR` embeds: the sealed bundle with its normalization settings,
/// canonical JSON (the filter then verifies the content hash over the text as it is). Also its asset count.
/// Built one asset at a time and abandoned as soon as it passes `EMBEDDED_BUNDLE_BYTES`, so an oversized
/// directory costs a refusal, not its whole bundle in memory.
pub fn payload(dir: &Path, normalization: &NormalizationConfig) -> Result<(String, usize)> {
    let mut bundle = CanonicalBundleWriter::default();
    let mut count = 0;
    let v = crate::bundle::validate(dir, normalization, |key, source, asset| {
        let text = to_canonical(&serde_json::to_value(BundledAsset { key, source, asset })?);
        if bundle.len() + text.len() > EMBEDDED_BUNDLE_BYTES {
            bail!(
                "the bundle of {} is over the {} MiB a module may carry (EMBEDDED_BUNDLE_BYTES: it would sit in \
                 every worker's VM besides its index, after {count} assets); publish the assets as a remote store \
                 instead (`understudy publish`, docs/store.md)",
                dir.display(),
                EMBEDDED_BUNDLE_BYTES >> 20
            );
        }
        bundle.push(&text);
        count += 1;
        Ok(())
    })?;
    eprintln!("{}", crate::bundle::summary(count, v.files, &v.counts, &v.duplicates));
    let norm = to_canonical(&serde_json::to_value(normalization)?);
    let text = format!("{{\"bundle\":{},\"format\":\"{EMBEDDED_FORMAT}\",\"normalization\":{norm}}}", bundle.finish());
    // Prove the filter will load it with a configuration carrying the same settings.
    let config = serde_json::json!({"normalization": normalization}).to_string();
    understudy_matcher::Runtime::from_json_sealed_embedded(&config, Some(&text))?;
    Ok((text, count))
}

/// The module at `wasm`'s embedded bundle, if it has one.
pub fn read(wasm: &Path) -> Result<Option<Embedded>> {
    let module = std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let Some(bytes) = extract(&module).with_context(|| format!("reading {}", wasm.display()))? else {
        return Ok(None);
    };
    let payload = String::from_utf8(bytes).context("the embedded bundle is not UTF-8")?;
    let doc: EmbeddedOf<BundleOf<&RawValue>> =
        serde_json::from_str(&payload).context("the embedded bundle is not an understudy bundle")?;
    let (count, normalization) = (doc.bundle.assets.len(), doc.normalization.clone());
    Ok(Some(Embedded { payload, count, normalization }))
}

/// Where the marker is: (segment index, position in the segment's bytes), and whether it is patched.
fn find_marker(segments: &[(Option<u64>, Vec<u8>)]) -> Result<(usize, usize)> {
    let mut found = Vec::new();
    for (i, (_, data)) in segments.iter().enumerate() {
        let mut from = 0;
        while let Some(p) = data.get(from..).and_then(|d| d.windows(32).position(|w| w == EMBED_MARKER_MAGIC)) {
            found.push((i, from + p));
            from += p + 1;
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => bail!("the module has no Understudy marker record: is it understudy.wasm (of this version)?"),
        _ => bail!("the module has {} Understudy marker records; expected one", found.len()),
    }
}

/// A module's data segments: (active offset, bytes).
type Segments = Vec<(Option<u64>, Vec<u8>)>;

fn segments(module: &[u8]) -> Result<Segments> {
    let mut out = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::DataSection(reader) = payload? {
            for d in reader {
                let d = d?;
                out.push((active_offset(&d.kind)?, d.data.to_vec()));
            }
        }
    }
    Ok(out)
}

fn active_offset(kind: &DataKind<'_>) -> Result<Option<u64>> {
    match kind {
        DataKind::Passive => Ok(None),
        DataKind::Active { memory_index: 0, offset_expr } => match offset_expr.get_operators_reader().read()? {
            Operator::I32Const { value } => Ok(Some(u64::from(value as u32))),
            other => bail!("a data segment's offset is {other:?}, not an i32.const"),
        },
        DataKind::Active { memory_index, .. } => bail!("a data segment targets memory {memory_index}"),
    }
}

/// The payload embedded in `module`, if any.
pub fn extract(module: &[u8]) -> Result<Option<Vec<u8>>> {
    let segs = segments(module)?;
    let (seg, at) = find_marker(&segs)?;
    let record = segs.get(seg).and_then(|(_, d)| d.get(at + 32..at + 40)).context("the marker record is cut")?;
    if record == UNSET {
        return Ok(None);
    }
    let word = |r: &[u8]| -> Result<u64> { Ok(u64::from(u32::from_le_bytes(r.try_into()?))) };
    let (offset, len) = (word(record.get(..4).unwrap_or_default())?, word(record.get(4..).unwrap_or_default())?);
    let data =
        segs.iter().find(|(o, _)| *o == Some(offset)).map(|(_, d)| d).context("no data at the marker's offset")?;
    if data.len() as u64 != len {
        bail!("the embedded segment holds {} bytes, the marker says {len}", data.len());
    }
    Ok(Some(data.clone()))
}

/// `module` with `payload` embedded (see the module docs).
pub fn embed(module: &[u8], payload: &[u8]) -> Result<Vec<u8>> {
    if payload.len() > EMBEDDED_BUNDLE_BYTES {
        bail!(
            "the bundle is {} MiB, over the {} MiB a module may carry (EMBEDDED_BUNDLE_BYTES: it would sit in every \
             worker's VM besides its index); publish the assets as a remote store instead (`understudy publish`, \
             docs/store.md)",
            payload.len() >> 20,
            EMBEDDED_BUNDLE_BYTES >> 20
        );
    }
    let segs = segments(module)?;
    let (marker_seg, marker_at) = find_marker(&segs)?;
    if segs.get(marker_seg).and_then(|(_, d)| d.get(marker_at + 32..marker_at + 40)) != Some(&UNSET[..]) {
        bail!("the module already carries an embedded bundle: package the plain understudy.wasm");
    }
    let mut out = Module::new();
    let mut placed = None;
    for payload_item in Parser::new(0).parse_all(module) {
        let item = payload_item?;
        let Some((id, range)) = item.as_section() else { continue };
        match (id, item) {
            (MEMORY_SECTION, Payload::MemorySection(reader)) => {
                let mut section = MemorySection::new();
                for (i, m) in reader.into_iter().enumerate() {
                    let m = m?;
                    let mut t = MemoryType {
                        minimum: m.initial,
                        maximum: m.maximum,
                        memory64: m.memory64,
                        shared: m.shared,
                        page_size_log2: m.page_size_log2,
                    };
                    if i == 0 {
                        if m.memory64 || m.page_size_log2.is_some() {
                            bail!("the module's memory is not a plain 32-bit memory");
                        }
                        let offset = m.initial * PAGE;
                        let pages = (payload.len() as u64).div_ceil(PAGE);
                        t.minimum = m.initial + pages;
                        if t.maximum.is_some_and(|max| max < t.minimum)
                            || (offset + payload.len() as u64) > u64::from(u32::MAX)
                        {
                            bail!("the module's memory can't grow to hold the bundle");
                        }
                        placed = Some(offset);
                    }
                    section.memory(t);
                }
                out.section(&section);
            }
            (DATA_COUNT_SECTION, Payload::DataCountSection { count, .. }) => {
                out.section(&DataCountSection { count: count + 1 });
            }
            (DATA_SECTION, Payload::DataSection(_)) => {
                let offset = placed.context("the module has no memory section before its data")?;
                let mut section = DataSection::new();
                for (i, (at, data)) in segs.iter().enumerate() {
                    let mut data = data.clone();
                    if i == marker_seg {
                        let mut patched = (offset as u32).to_le_bytes().to_vec();
                        patched.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                        let record =
                            data.get_mut(marker_at + 32..marker_at + 40).context("the marker record is cut")?;
                        record.copy_from_slice(&patched);
                    }
                    match at {
                        Some(o) => section.active(0, &ConstExpr::i32_const(*o as u32 as i32), data),
                        None => section.passive(data),
                    };
                }
                section.active(0, &ConstExpr::i32_const(offset as u32 as i32), payload.iter().copied());
                out.section(&section);
            }
            _ => {
                let data = module.get(range.start as usize..range.end as usize).context("a section is cut")?;
                out.section(&RawSection { id, data });
            }
        }
    }
    Ok(out.finish())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use wasm_encoder::{CodeSection, CustomSection, Function, FunctionSection, Instruction, TypeSection};

    /// A small module shaped like understudy.wasm: a memory, code, the marker record in a data segment.
    fn module(with_data_count: bool) -> Vec<u8> {
        let mut m = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        m.section(&types);
        let mut funcs = FunctionSection::new();
        funcs.function(0);
        m.section(&funcs);
        let mut mem = MemorySection::new();
        mem.memory(MemoryType { minimum: 17, maximum: None, memory64: false, shared: false, page_size_log2: None });
        m.section(&mem);
        if with_data_count {
            m.section(&DataCountSection { count: 2 });
        }
        let mut code = CodeSection::new();
        let mut f = Function::new([]);
        f.instruction(&Instruction::End);
        code.function(&f);
        m.section(&code);
        let mut data = DataSection::new();
        let mut record = b"rodata before ".to_vec();
        record.extend_from_slice(&EMBED_MARKER_MAGIC);
        record.extend_from_slice(&UNSET);
        data.active(0, &ConstExpr::i32_const(1024), record);
        data.passive(b"passive".iter().copied());
        m.section(&data);
        m.section(&CustomSection { name: "name".into(), data: b"\x00\x01x".as_slice().into() });
        m.finish()
    }

    #[test]
    fn a_payload_goes_into_a_new_segment_past_the_initial_memory_and_the_marker_points_at_it() {
        for with_data_count in [false, true] {
            let plain = module(with_data_count);
            assert_eq!(extract(&plain).unwrap(), None);
            let payload = vec![b'{'; 70_000];
            let out = embed(&plain, &payload).unwrap();
            assert_eq!(extract(&out).unwrap().as_deref(), Some(payload.as_slice()));
            let mut features = wasmparser::WasmFeatures::default();
            features.set(wasmparser::WasmFeatures::BULK_MEMORY, true);
            wasmparser::Validator::new_with_features(features).validate_all(&out).unwrap();
            // The memory grew by the payload's pages; the payload sits at the old end; the rest is unchanged.
            for item in Parser::new(0).parse_all(&out) {
                if let Payload::MemorySection(r) = item.unwrap() {
                    assert_eq!(r.into_iter().next().unwrap().unwrap().initial, 17 + 2);
                }
            }
            let segs = segments(&out).unwrap();
            assert_eq!(segs.last().unwrap().0, Some(17 * PAGE));
            assert_eq!(segs[0].1[..14], b"rodata before "[..]);
            assert!(out.windows(4).any(|w| w == b"\x00\x01x\x00") || out.ends_with(b"\x00\x01x"));
            // Deterministic, and refused twice.
            assert_eq!(embed(&plain, &payload).unwrap(), out);
            assert!(embed(&out, b"{}").unwrap_err().to_string().contains("already carries"));
        }
    }

    #[test]
    fn the_streamed_payload_is_the_canonical_embedded_document_of_the_sealed_bundle() {
        let examples = crate::launcher::project_root().join("examples/assets");
        let norm = NormalizationConfig::default();
        let (text, count) = payload(&examples, &norm).unwrap();
        let built = crate::bundle::build(&examples, &norm).unwrap();
        assert_eq!(count, built.bundle.assets.len());
        let typed = EmbeddedOf { format: EMBEDDED_FORMAT.into(), normalization: norm, bundle: built.bundle };
        assert_eq!(text, to_canonical(&serde_json::to_value(&typed).unwrap()));
    }

    #[test]
    fn a_module_without_the_marker_or_a_payload_too_big_is_refused() {
        let mut m = Module::new();
        let mut mem = MemorySection::new();
        mem.memory(MemoryType { minimum: 1, maximum: None, memory64: false, shared: false, page_size_log2: None });
        m.section(&mem);
        assert!(embed(&m.finish(), b"{}").unwrap_err().to_string().contains("no Understudy marker"));
        let big = vec![b' '; EMBEDDED_BUNDLE_BYTES + 1];
        assert!(embed(&module(false), &big).unwrap_err().to_string().contains("understudy publish"));
    }
}
