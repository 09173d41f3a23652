//! The bundle embedded in the module by `understudy package --assets` (docs/store.md).
//!
//! A wasm module can't read its own custom sections at run time, so the bundle travels as data: the filter
//! reserves [`MARKER`], a static record of a 32-byte magic followed by an offset and a length (`u32::MAX`
//! both: nothing embedded). The packager (`cli/src/embed.rs`, with `wasmparser` and `wasm-encoder`) appends
//! an active data segment holding the bundle at the end of the module's initial linear memory, raises the
//! initial memory to cover it, and patches the record. The allocator only ever hands out memory it gets from
//! `memory.grow` (or below the linker's `__heap_end`), so the segment is never written over. The bundle
//! itself is verified against its content hash at load, like an inline one.
//!
//! Reading it takes the crate's only `unsafe`: a volatile read of the record (the compiler would otherwise
//! fold the `u32::MAX` it was built with) and a slice over the memory the record points to, after checking
//! that it lies inside the linear memory.

use understudy_matcher::EMBED_MARKER_MAGIC;

/// The record the packager patches: magic, offset, length (little-endian, as wasm stores `u32`s).
#[repr(C)]
struct Marker {
    magic: [u8; 32],
    offset: u32,
    len: u32,
}

#[used]
static MARKER: Marker = Marker { magic: EMBED_MARKER_MAGIC, offset: u32::MAX, len: u32::MAX };

/// The embedded bundle's JSON text, if the module carries one. `Err` says why a patched record is unusable.
pub fn bundle() -> Result<Option<&'static str>, String> {
    // SAFETY: reads two plain `u32` fields of a static that lives for the whole program; volatile because the
    // packager changes them in the module's data after compilation.
    #[allow(unsafe_code)]
    let (offset, len) = unsafe { (std::ptr::read_volatile(&MARKER.offset), std::ptr::read_volatile(&MARKER.len)) };
    if offset == u32::MAX && len == u32::MAX {
        return Ok(None);
    }
    let (start, len) = (offset as usize, len as usize);
    let end = start.checked_add(len).ok_or("the embedded bundle's record overflows")?;
    if start == 0 || end > memory_bytes() {
        return Err(format!("the embedded bundle's record points outside linear memory ({start}..{end})"));
    }
    // SAFETY: `start..end` is inside the linear memory (checked above), which lives as long as the VM; the
    // packager placed the bundle there in a data segment above the allocator's heap, so nothing writes to it.
    #[allow(unsafe_code)]
    let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
    std::str::from_utf8(bytes).map(Some).map_err(|e| format!("the embedded bundle is not UTF-8: {e}"))
}

/// The linear memory's current size in bytes.
fn memory_bytes() -> usize {
    #[cfg(target_arch = "wasm32")]
    let pages = core::arch::wasm32::memory_size(0);
    #[cfg(not(target_arch = "wasm32"))]
    let pages = 0usize;
    pages.saturating_mul(65_536)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_module_built_as_is_embeds_nothing() {
        assert_eq!(super::bundle(), Ok(None));
    }
}
