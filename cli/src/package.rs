//! `understudy package`: the filter as OCI images that Istio, Envoy Gateway and any registry understand.
//!
//! Two flavours of the same module, written into one OCI image layout (and pushed on request):
//! - the **wasm artifact** (Istio's and Envoy Gateway's "oci" variant): a runtime-config layer
//!   (`application/vnd.module.wasm.config.v1+json`, also the manifest's config) and the module itself as a raw
//!   layer (`application/vnd.module.wasm.content.layer.v1+wasm`). Both fetchers insist on exactly these two
//!   layers. The module layer's digest is the module's own SHA-256, so the registry's blob URL serves it as
//!   is (plain Envoy's `vm_config.code.remote` can fetch it from there).
//! - the **compat image**: one `application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm`,
//!   with a standard image config, for registries and tools that only take container images.
//!
//! Everything is deterministic (no timestamps, fixed tar headers, fixed gzip header), so the same module always
//! gives the same manifest digests: `understudy manifests` computes the digest to pin without a registry.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::registry::{ImageRef, Registry};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.module.wasm.config.v1+json";
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
pub const IMAGE_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const TAR_GZIP_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The file name the compat fetchers look for in the layer.
const COMPAT_FILE: &str = "plugin.wasm";

#[derive(Args)]
pub struct PackageArgs {
    /// The filter [default: found like `understudy up` finds it].
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// OCI image layout directory to write (both flavours).
    #[arg(short, long, default_value = "understudy-oci")]
    output: PathBuf,
    /// Tag of the wasm artifact in the layout; the compat image gets TAG-compat.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    tag: String,
    /// Push to this reference (registry/repository:tag): the wasm artifact, or the compat image with --compat.
    #[arg(long)]
    push: Option<String>,
    /// Push the compat image (plugin.wasm in a tar+gzip layer) instead of the wasm artifact.
    #[arg(long, requires = "push")]
    compat: bool,
    /// Talk to the registry over plain HTTP (a local or test registry).
    #[arg(long)]
    plain_http: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Embed this assets directory's bundle in the module, so the image carries filter and assets; the plugin
    /// configuration then needs no bundle (docs/store.md).
    #[arg(long)]
    assets: Option<PathBuf>,
    /// Normalization settings for --assets (JSON: ignore_fields, scrubbers).
    #[arg(long, requires = "assets")]
    normalization: Option<PathBuf>,
    /// Also write the packaged module to this file (for `understudy up --wasm` or Envoy's vm_config).
    #[arg(long)]
    module_out: Option<PathBuf>,
}

/// The module to package: the filter, with the assets' bundle embedded when `assets` is given.
pub fn module_with(wasm: &Path, assets: Option<&Path>, normalization: Option<&Path>) -> Result<Vec<u8>> {
    let module = std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    if !module.starts_with(b"\0asm") {
        bail!("{} is not a WebAssembly module", wasm.display());
    }
    let Some(dir) = assets else { return Ok(module) };
    let (payload, count) = crate::embed::payload(dir, &crate::bundle::load_normalization(normalization)?)?;
    let out = crate::embed::embed(&module, payload.as_bytes())?;
    eprintln!("embedded {count} assets ({} bytes) in the module", payload.len());
    Ok(out)
}

/// A content-addressed blob.
pub struct Blob {
    pub media_type: &'static str,
    pub bytes: Vec<u8>,
    pub annotations: Option<Value>,
}

impl Blob {
    pub fn digest(&self) -> String {
        sha256_digest(&self.bytes)
    }

    fn descriptor(&self) -> Value {
        let mut d = json!({"mediaType": self.media_type, "digest": self.digest(), "size": self.bytes.len()});
        if let (Some(a), Some(m)) = (&self.annotations, d.as_object_mut()) {
            m.insert("annotations".into(), a.clone());
        }
        d
    }
}

/// One image: its manifest and every blob it references (config first).
pub struct Image {
    pub manifest: Vec<u8>,
    pub blobs: Vec<Blob>,
}

impl Image {
    pub fn digest(&self) -> String {
        sha256_digest(&self.manifest)
    }
}

/// `sha256:<hex>`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn manifest(config: &Blob, layers: &[&Blob], annotations: Value) -> Result<Vec<u8>> {
    let m = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.descriptor(),
        "layers": layers.iter().map(|l| l.descriptor()).collect::<Vec<_>>(),
        "annotations": annotations,
    });
    Ok(serde_json::to_vec(&m)?)
}

fn base_annotations() -> serde_json::Map<String, Value> {
    let mut a = serde_json::Map::new();
    a.insert("org.opencontainers.image.title".into(), json!("understudy"));
    a.insert("org.opencontainers.image.version".into(), json!(env!("CARGO_PKG_VERSION")));
    a.insert("org.opencontainers.image.licenses".into(), json!(env!("CARGO_PKG_LICENSE")));
    a.insert(
        "org.opencontainers.image.description".into(),
        json!("Understudy: LLM service virtualization, a proxy-wasm filter for Envoy (root_id understudy)"),
    );
    a
}

fn runtime_config() -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&json!({
        "type": "envoy_proxy",
        "abi_versions": ["proxy_abi_version_0_2_1"],
        "config": {"root_ids": ["understudy"]}
    }))?)
}

/// The wasm artifact: runtime config (as config and first layer) + the raw module layer.
pub fn wasm_artifact(module: &[u8]) -> Result<Image> {
    let title = |t: &str| Some(json!({"org.opencontainers.image.title": t}));
    let config = Blob { media_type: WASM_CONFIG_MEDIA_TYPE, bytes: runtime_config()?, annotations: None };
    let config_layer = Blob {
        media_type: WASM_CONFIG_MEDIA_TYPE,
        bytes: config.bytes.clone(),
        annotations: title("runtime-config.json"),
    };
    let module = Blob { media_type: WASM_LAYER_MEDIA_TYPE, bytes: module.to_vec(), annotations: title(COMPAT_FILE) };
    let mut a = base_annotations();
    a.insert("module.wasm.runtime/type".into(), json!("envoy_proxy"));
    a.insert("module.wasm.runtime/abi_version".into(), json!("proxy_abi_version_0_2_1"));
    let manifest = manifest(&config, &[&config_layer, &module], Value::Object(a))?;
    // The config and the config layer are one blob.
    Ok(Image { manifest, blobs: vec![config, module] })
}

/// The compat image: `plugin.wasm` (and the runtime config) in one tar+gzip layer, with a standard image config.
pub fn compat_image(module: &[u8]) -> Result<Image> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, bytes) in [(COMPAT_FILE, module.to_vec()), ("runtime-config.json", runtime_config()?)] {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, bytes.as_slice()).context("building the compat layer")?;
    }
    let tar_bytes = tar.into_inner().context("building the compat layer")?;
    let diff_id = sha256_digest(&tar_bytes);
    // A fixed gzip header (no name, mtime 0), so the layer digest only depends on the module.
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar_bytes)?;
    let layer = Blob { media_type: TAR_GZIP_LAYER_MEDIA_TYPE, bytes: gz.finish()?, annotations: None };
    let config = Blob {
        media_type: IMAGE_CONFIG_MEDIA_TYPE,
        bytes: serde_json::to_vec(&json!({
            "architecture": "wasm",
            "os": "wasip1",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]}
        }))?,
        annotations: None,
    };
    let mut a = base_annotations();
    a.insert("module.wasm.image/variant".into(), json!("compat"));
    let manifest = manifest(&config, &[&layer], Value::Object(a))?;
    Ok(Image { manifest, blobs: vec![config, layer] })
}

/// Writes both images into an OCI image layout at `dir` (blobs shared, index listing both by ref name).
pub fn write_layout(dir: &Path, images: &[(&str, &Image)]) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("cannot create {}", blobs.display()))?;
    let mut entries = Vec::new();
    for (tag, image) in images {
        let all = image.blobs.iter().map(|b| b.bytes.as_slice()).chain(std::iter::once(image.manifest.as_slice()));
        for bytes in all {
            let path = blobs.join(sha256_hex(bytes));
            std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        }
        entries.push(json!({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": image.digest(),
            "size": image.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }));
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": entries});
    std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    Ok(())
}

pub fn run(a: PackageArgs) -> Result<()> {
    let wasm = crate::launcher::find_wasm(a.wasm.clone())?;
    let module = module_with(&wasm, a.assets.as_deref(), a.normalization.as_deref())?;
    if let Some(out) = &a.module_out {
        std::fs::write(out, &module).with_context(|| format!("cannot write {}", out.display()))?;
    }
    let artifact = wasm_artifact(&module)?;
    let compat = compat_image(&module)?;
    let compat_tag = format!("{}-compat", a.tag);
    write_layout(&a.output, &[(&a.tag, &artifact), (&compat_tag, &compat)])?;
    let pushed = match &a.push {
        Some(r) => {
            let reference = ImageRef::parse(r)?;
            let image = if a.compat { &compat } else { &artifact };
            let digest = Registry::new(&reference, a.plain_http)?.push(&reference, image)?;
            Some(format!("{}@{digest}", reference.repository_url()))
        }
        None => None,
    };
    let module_sha = sha256_hex(&module);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "module": {"path": wasm, "size": module.len(), "sha256": module_sha, "assets": a.assets,
                           "written_to": a.module_out},
                "layout": a.output,
                "wasm_artifact": {"ref": a.tag, "digest": artifact.digest()},
                "compat_image": {"ref": compat_tag, "digest": compat.digest()},
                "pushed": pushed,
            }))?
        );
        return Ok(());
    }
    match &a.assets {
        Some(dir) => {
            println!("module        {} with {} embedded ({} bytes)", wasm.display(), dir.display(), module.len())
        }
        None => println!("module        {} ({} bytes)", wasm.display(), module.len()),
    }
    println!("module sha256 {module_sha}");
    println!("OCI layout    {} (tags {} and {compat_tag})", a.output.display(), a.tag);
    println!("wasm artifact {}  (Istio/Envoy Gateway oci variant: config + module layers)", artifact.digest());
    println!("compat image  {}  (plugin.wasm in a tar+gzip layer)", compat.digest());
    if let Some(p) = pushed {
        println!("pushed        {p}");
    }
    println!(
        "Pin it: WasmPlugin sha256 / EnvoyExtensionPolicy image.sha256 = the pushed manifest's digest (hex); \
         Envoy vm_config.code.remote sha256 = the module sha256."
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0 a tiny stand-in for a module";

    #[test]
    fn wasm_artifact_has_the_two_layers_istio_and_envoy_gateway_require() {
        let img = wasm_artifact(MODULE).unwrap();
        let m: Value = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(m["mediaType"], MANIFEST_MEDIA_TYPE);
        assert_eq!(m["config"]["mediaType"], WASM_CONFIG_MEDIA_TYPE);
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0]["mediaType"], WASM_CONFIG_MEDIA_TYPE);
        assert_eq!(layers[1]["mediaType"], WASM_LAYER_MEDIA_TYPE);
        // The module layer is the module, byte for byte: its digest is the module's SHA-256.
        assert_eq!(layers[1]["digest"], sha256_digest(MODULE));
        assert_eq!(layers[1]["size"], MODULE.len());
        // Deterministic: the same module gives the same manifest digest.
        assert_eq!(img.digest(), wasm_artifact(MODULE).unwrap().digest());
        assert_ne!(img.digest(), wasm_artifact(b"\0asm other").unwrap().digest());
    }

    #[test]
    fn compat_image_holds_plugin_wasm_in_a_tar_gzip_layer() {
        let img = compat_image(MODULE).unwrap();
        let m: Value = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(m["layers"][0]["mediaType"], TAR_GZIP_LAYER_MEDIA_TYPE);
        assert_eq!(m["annotations"]["module.wasm.image/variant"], "compat");
        let layer = &img.blobs[1];
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer.bytes.as_slice()));
        let mut found = None;
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().to_str() == Some(COMPAT_FILE) {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut v).unwrap();
                found = Some(v);
            }
        }
        assert_eq!(found.as_deref(), Some(MODULE));
        // The config's diff_id is the uncompressed layer's digest.
        let cfg: Value = serde_json::from_slice(&img.blobs[0].bytes).unwrap();
        let mut tar_bytes = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(layer.bytes.as_slice()), &mut tar_bytes).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"][0], sha256_digest(&tar_bytes));
        assert_eq!(img.digest(), compat_image(MODULE).unwrap().digest());
    }

    #[test]
    fn layout_lists_both_images_and_stores_every_blob() {
        let dir = std::env::temp_dir().join(format!("understudy-layout-test-{}", std::process::id()));
        let (a, c) = (wasm_artifact(MODULE).unwrap(), compat_image(MODULE).unwrap());
        write_layout(&dir, &[("t", &a), ("t-compat", &c)]).unwrap();
        let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], a.digest());
        assert_eq!(index["manifests"][1]["annotations"]["org.opencontainers.image.ref.name"], "t-compat");
        for img in [&a, &c] {
            for b in img.blobs.iter().map(|b| b.bytes.as_slice()).chain([img.manifest.as_slice()]) {
                assert_eq!(std::fs::read(dir.join("blobs/sha256").join(sha256_hex(b))).unwrap(), b);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
