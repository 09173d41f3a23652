"""`understudy package`: both OCI flavours pushed to a real registry on loopback and pulled back with skopeo.

Digests must survive the round trip byte for byte, and the module that comes back must be understudy.wasm.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import UNDERSTUDY, WASM

WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package(out: Path, *extra: str) -> dict:
    r = subprocess.run([str(UNDERSTUDY), "package", "--wasm", str(WASM), "-o", str(out), "--json", *extra],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def skopeo(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("skopeo")
    assert exe, "skopeo is missing: run `bash scripts/install-deploy-tools.sh`"
    return subprocess.run([exe, "--insecure-policy", *args], capture_output=True, timeout=120)


def layout_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def layout_manifest(layout: Path, ref: str) -> tuple[str, dict]:
    index = json.loads((layout / "index.json").read_text())
    [entry] = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == ref]
    return entry["digest"], json.loads(layout_blob(layout, entry["digest"]))


def plugin_wasm_of(layer: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as t:
        f = t.extractfile("plugin.wasm")
        assert f is not None
        return f.read()


@pytest.fixture(scope="module")
def pushed(registry, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("package")
    host = registry.host
    wasm = package(out / "layout", "--push", f"{host}/understudy/filter:e2e", "--plain-http")
    compat = package(out / "layout", "--push", f"{host}/understudy/filter:e2e-compat", "--plain-http", "--compat")
    return {"dir": out, "wasm": wasm, "compat": compat, "host": host}


def test_printed_digests_are_the_modules_and_the_manifests(pushed):
    module = WASM.read_bytes()
    res = pushed["wasm"]
    assert res["module"]["sha256"] == sha256(module) and res["module"]["size"] == len(module)
    assert res["pushed"].endswith("@" + res["wasm_artifact"]["digest"])
    assert pushed["compat"]["pushed"].endswith("@" + res["compat_image"]["digest"])
    # Deterministic: a second run (the --compat one) computed the same digests for the same module.
    assert pushed["compat"]["wasm_artifact"] == res["wasm_artifact"]
    layout = pushed["dir"] / "layout"
    digest, manifest = layout_manifest(layout, res["wasm_artifact"]["ref"])
    assert digest == res["wasm_artifact"]["digest"]
    assert [l["mediaType"] for l in manifest["layers"]] == [WASM_CONFIG, WASM_LAYER]
    assert manifest["config"]["mediaType"] == WASM_CONFIG
    assert layout_blob(layout, manifest["layers"][1]["digest"]) == module


@pytest.mark.parametrize("flavour", ["wasm", "compat"])
def test_registry_serves_the_pushed_manifest_byte_for_byte(pushed, registry, flavour):
    res = pushed[flavour]
    want = res["wasm_artifact" if flavour == "wasm" else "compat_image"]["digest"]
    tag = "e2e" if flavour == "wasm" else "e2e-compat"
    status, headers, body = registry.get(f"/v2/understudy/filter/manifests/{tag}", accept=OCI_MANIFEST)
    assert status == 200, body
    assert "sha256:" + sha256(body) == want == headers.get("docker-content-digest")
    r = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/understudy/filter:{tag}")
    assert r.returncode == 0, r.stderr.decode()
    assert "sha256:" + sha256(r.stdout) == want


def test_skopeo_pulls_both_flavours_back_with_the_same_digests_and_module(pushed, registry, tmp_path):
    module = WASM.read_bytes()
    pulled = tmp_path / "pulled"
    for tag in ("e2e", "e2e-compat"):
        r = skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/understudy/filter:{tag}",
                   f"oci:{pulled}:{tag}")
        assert r.returncode == 0, r.stderr.decode()
    digest, manifest = layout_manifest(pulled, "e2e")
    assert digest == pushed["wasm"]["wasm_artifact"]["digest"]
    [layer] = [l for l in manifest["layers"] if l["mediaType"] == WASM_LAYER]
    assert layout_blob(pulled, layer["digest"]) == module
    digest, manifest = layout_manifest(pulled, "e2e-compat")
    assert digest == pushed["wasm"]["compat_image"]["digest"]
    assert [l["mediaType"] for l in manifest["layers"]] == [TAR_GZIP]
    assert manifest["annotations"]["module.wasm.image/variant"] == "compat"
    assert plugin_wasm_of(layout_blob(pulled, manifest["layers"][0]["digest"])) == module


def test_skopeo_pushes_the_written_layout_unchanged(pushed, registry):
    """The layout is a valid OCI image layout: a standard tool copies it without changing a digest."""
    res = pushed["wasm"]
    for ref, key in ((res["wasm_artifact"]["ref"], "wasm_artifact"), (res["compat_image"]["ref"], "compat_image")):
        r = skopeo("copy", "--dest-tls-verify=false", f"oci:{pushed['dir'] / 'layout'}:{ref}",
                   f"docker://{registry.host}/understudy/via-skopeo:{ref}")
        assert r.returncode == 0, r.stderr.decode()
        status, _, body = registry.get(f"/v2/understudy/via-skopeo/manifests/{ref}", accept=OCI_MANIFEST)
        assert status == 200 and "sha256:" + sha256(body) == res[key]["digest"]


def test_module_blob_url_serves_the_module_for_envoy_remote_code(pushed, registry):
    """Plain Envoy fetches the module straight from the registry: the layer digest is the module's SHA-256."""
    module = WASM.read_bytes()
    status, _, body = registry.get(f"/v2/understudy/filter/blobs/sha256:{sha256(module)}")
    assert status == 200 and body == module


def test_a_pinned_reference_that_does_not_match_is_refused(registry, tmp_path):
    wrong = "sha256:" + "0" * 64
    r = subprocess.run([str(UNDERSTUDY), "package", "--wasm", str(WASM), "-o", str(tmp_path / "l"), "--plain-http",
                        "--push", f"{registry.host}/understudy/pinned@{wrong}"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and re.search(r"pins sha256:0+, but this image is sha256:[0-9a-f]{64}", r.stderr), r.stderr
    assert registry.get(f"/v2/understudy/pinned/manifests/{wrong}", accept=OCI_MANIFEST)[0] == 404


def test_no_registry_host_is_a_clear_error(tmp_path):
    r = subprocess.run([str(UNDERSTUDY), "package", "--wasm", str(WASM), "-o", str(tmp_path / "l"),
                        "--push", "understudy:1"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "name the registry" in r.stderr, r.stderr
