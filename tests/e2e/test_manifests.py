"""`understudy manifests`: Istio manifests validate against Istio's published schemas, Envoy configurations
validate in the pinned Envoy, and the plugin configuration survives Kubernetes' YAML and number handling."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ENVOY, EXAMPLE_ASSETS, ROOT, UNDERSTUDY, WASM

NODE_DIR = ROOT / ".tools" / "deploy-node"
VALIDATOR = Path(__file__).resolve().parent / "validate_k8s.mjs"
IMAGE = "registry.example.com:5000/platform/understudy:0.1.0"


def understudy(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(UNDERSTUDY), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def manifests(out: Path, *extra: str, assets: Path = EXAMPLE_ASSETS) -> dict[str, Path]:
    r = understudy("manifests", "--env", "ci", "--image", IMAGE, "--wasm", str(WASM), "--assets", str(assets),
                   "--ecds-path", str(out / "understudy-ecds.yaml"), "-o", str(out), *extra)
    assert r.returncode == 0, r.stderr
    return {p.name: p for p in out.iterdir()}


def schema_check(*files: Path) -> list[dict]:
    assert (NODE_DIR / "node_modules" / "@kubernetes-models" / "istio").is_dir(), \
        "run `bash scripts/install-deploy-tools.sh`"
    r = subprocess.run(["node", str(VALIDATOR), str(NODE_DIR), *map(str, files)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def envoy_validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
                           "--log-level", "warning"], capture_output=True, text=True, timeout=120)


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def plugin_config() -> dict:
    r = understudy("plugin-config", str(EXAMPLE_ASSETS))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module", params=["gateway", "sidecar"])
def generated(request, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp(f"manifests-{request.param}")
    extra = ["--target", request.param, "--listen", "127.0.0.1"]
    if request.param == "sidecar":
        extra += ["--selector", "app=checkout-tests", "--port", "18080"]
    return manifests(out, *extra)


POLICY = {"environments": {"ci": {"mode": "replay"}, "staging": {"mode": "parity", "live_sample": 0.02},
                           "prod": {"mode": "live"}}}


def test_the_policy_and_the_environment_travel_with_the_manifests(tmp_path):
    """A mesh-wide policy (docs/policy.md) rides in the plugin configuration, and the plain Envoy bootstrap names
    the environment in its node metadata."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    files = manifests(tmp_path / "out", "--policy", str(policy), "--listen", "127.0.0.1")
    schema_check(files["istio.yaml"])
    plugin = docs(files["istio.yaml"])[0]["spec"]["pluginConfig"]
    assert plugin["policy"]["environments"]["staging"] == {"mode": "parity", "on_miss": "error", "live_sample": 0.02}
    boot = yaml.safe_load(files["envoy.yaml"].read_text())
    assert boot["node"]["metadata"] == {"UNDERSTUDY_ENV": "ci"}
    r = envoy_validate(files["envoy.yaml"])
    assert r.returncode == 0, r.stderr[-3000:]


def test_every_istio_manifest_validates_against_istios_schemas(generated):
    results = schema_check(generated["istio.yaml"])
    kinds = sorted(r["kind"] for r in results)
    assert {"WasmPlugin", "EnvoyFilter"} <= set(kinds), kinds
    for r in results:
        assert r["schema"] == "validated" and "error" not in r, r


def test_the_schema_check_can_fail(generated, tmp_path):
    """Negative control: Istio's enum is FAIL_CLOSE (not FAIL_CLOSED); bad enums and types must be refused."""
    plugin = docs(generated["istio.yaml"])[0]
    for mutate in (lambda s: s.update(failStrategy="FAIL_CLOSED"), lambda s: s.update(phase="LATE"),
                   lambda s: s.update(priority="high"), lambda s: s["match"][0].update(mode="OUTBOUND")):
        bad = json.loads(json.dumps(plugin))
        mutate(bad["spec"])
        p = tmp_path / "bad.yaml"
        p.write_text(yaml.safe_dump(bad))
        [r] = schema_check(p)
        assert "error" in r, (bad["spec"].keys(), r)


def test_wasm_plugin_pins_the_image_fails_closed_and_matches_only_the_llm_port(generated, plugin_config):
    plugin, buffer = docs(generated["istio.yaml"])[:2]
    spec = plugin["spec"]
    r = understudy("package", "--wasm", str(WASM), "-o", str(generated["istio.yaml"].parent / "oci"), "--json")
    digest = json.loads(r.stdout)["wasm_artifact"]["digest"]
    assert spec["url"] == "oci://" + IMAGE and "sha256:" + spec["sha256"] == digest
    assert spec["failStrategy"] == "FAIL_CLOSE" and spec["pluginName"] == "understudy"
    assert spec["phase"] and isinstance(spec["priority"], int)
    port = spec["match"][0]["ports"][0]["number"]
    assert spec["match"][0]["mode"] == "CLIENT"
    patch = buffer["spec"]["configPatches"][0]
    assert patch["match"]["listener"]["portNumber"] == port
    assert patch["patch"]["operation"] == "INSERT_BEFORE"
    assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == "envoy.filters.http.router"
    assert patch["patch"]["value"]["typed_config"]["max_request_bytes"] == 64 * 1024 * 1024
    # YAML 1.1 (PyYAML, like Kubernetes' own parser) reads back exactly the plugin configuration.
    assert spec["pluginConfig"] == plugin_config
    selector = spec.get("selector", {}).get("matchLabels")
    assert selector == buffer["spec"].get("workloadSelector", {}).get("labels")


def test_sidecar_target_originates_tls_to_each_llm_host(generated):
    objs = docs(generated["istio.yaml"])
    entries = [o for o in objs if o["kind"] == "ServiceEntry"]
    rules = {o["spec"]["host"]: o for o in objs if o["kind"] == "DestinationRule"}
    if objs[0]["spec"]["match"][0]["ports"][0]["number"] != 18080:
        assert not entries and not rules  # gateway target
        return
    assert sorted(e["spec"]["hosts"][0] for e in entries) == ["api.anthropic.com", "api.openai.com"]
    for e in entries:
        host = e["spec"]["hosts"][0]
        assert e["spec"]["ports"] == [{"number": 18080, "name": "http-understudy", "protocol": "HTTP", "targetPort": 443}]
        tls = rules[host]["spec"]["trafficPolicy"]["portLevelSettings"][0]
        assert tls == {"port": {"number": 18080}, "tls": {"mode": "SIMPLE", "sni": host}}


def test_envoy_gateway_policies_target_the_llm_routes_and_order_the_buffer_after_wasm(generated, plugin_config):
    ext, buf, proxy = docs(generated["envoy-gateway.yaml"])
    assert (ext["kind"], buf["kind"], proxy["kind"]) == ("EnvoyExtensionPolicy", "BackendTrafficPolicy", "EnvoyProxy")
    wasm = ext["spec"]["wasm"][0]
    assert wasm["code"] == {"type": "Image", "image": {"url": IMAGE, "sha256": docs(generated["istio.yaml"])[0]["spec"]["sha256"]}}
    assert wasm["rootID"] == "understudy" and wasm["failOpen"] is False and wasm["config"] == plugin_config
    assert ext["spec"]["targetRefs"] == buf["spec"]["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "llm"}]
    assert buf["spec"]["requestBuffer"] == {"limit": "64Mi"}
    assert proxy["spec"]["filterOrder"] == [{"name": "envoy.filters.http.buffer", "after": "envoy.filters.http.wasm"}]


def test_plain_envoy_bootstrap_and_its_ecds_resource_validate(generated, tmp_path):
    r = envoy_validate(generated["envoy.yaml"])
    assert r.returncode == 0, r.stderr[-3000:]
    # The ECDS resource, inlined where config_discovery stands, validates too (validate mode loads the plugin
    # configuration into the filter, so a bad one fails here).
    boot = yaml.safe_load(generated["envoy.yaml"].read_text())
    ecds = yaml.safe_load(generated["understudy-ecds.yaml"].read_text())
    [res] = ecds["resources"]
    code = res["typed_config"]["config"]["vm_config"]["code"]["remote"]
    assert code["sha256"] == __import__("hashlib").sha256(WASM.read_bytes()).hexdigest()
    assert code["http_uri"]["uri"].endswith(f"/v2/platform/understudy/blobs/sha256:{code['sha256']}")
    assert res["typed_config"]["config"]["failure_policy"] == "FAIL_RELOAD"
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    [f] = [f for f in hcm["http_filters"] if f["name"] == "understudy"]
    del f["config_discovery"]
    f["typed_config"] = res["typed_config"]
    static = tmp_path / "static.json"
    static.write_text(json.dumps(boot))
    r = envoy_validate(static)
    assert r.returncode == 0, r.stderr[-3000:]


def _as_istio_would(v):
    """pluginConfig goes through a protobuf Struct: every number becomes a 64-bit float."""
    if isinstance(v, dict):
        return {k: _as_istio_would(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_as_istio_would(x) for x in v]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return struct.unpack("<d", struct.pack("<d", float(v)))[0]
    return v


def test_plugin_config_as_istio_and_envoy_gateway_deliver_it_loads_in_envoy(generated, tmp_path):
    """The filter still accepts the configuration after Kubernetes and Istio re-encode it (floats, key order)."""
    spec = docs(generated["istio.yaml"])[0]["spec"]
    out = tmp_path / "boot.json"
    r = understudy("up", "--assets", str(EXAMPLE_ASSETS), "--print-config", str(out))
    assert r.returncode == 0, r.stderr
    boot = json.loads(out.read_text())
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    [f] = [f for f in hcm["http_filters"] if f["name"] == "understudy"]
    f["typed_config"]["config"]["configuration"]["value"] = json.dumps(_as_istio_would(spec["pluginConfig"]))
    # And the EnvoyFilter's buffer filter is a valid filter of this Envoy.
    patch = docs(generated["istio.yaml"])[1]["spec"]["configPatches"][0]["patch"]["value"]
    hcm["http_filters"] = [patch if x["name"] == "envoy.filters.http.buffer" else x for x in hcm["http_filters"]]
    out.write_text(json.dumps(boot))
    r = envoy_validate(out)
    assert r.returncode == 0, r.stderr[-3000:]


def test_numbers_kubernetes_would_change_are_refused(tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "a.json").write_text(
        '{"request": {"path": "/v1/chat/completions", "body": {"model": "m", "messages": [], "seed": 123456789012345678901234567890}},'
        ' "response": {"body": {"id": "x"}}}')
    r = understudy("manifests", "--env", "ci", "--image", IMAGE, "--wasm", str(WASM), "--assets", str(assets),
                   "--flavor", "istio")
    assert r.returncode != 0 and "64-bit float" in r.stderr and "/seed" in r.stderr, r.stderr
    # Plain Envoy carries the configuration as a string: no such limit there.
    r = understudy("manifests", "--env", "ci", "--image", IMAGE, "--wasm", str(WASM), "--assets", str(assets),
                   "--flavor", "envoy")
    assert r.returncode == 0, r.stderr


def test_a_plugin_config_over_a_kubernetes_object_is_refused(tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    big = "x" * (1100 * 1024)
    (assets / "a.json").write_text(json.dumps({"request": {"path": "/v1/chat/completions", "body": {"model": "m", "messages": []}},
                                               "response": {"body": {"id": "x", "text": big}}}))
    r = understudy("manifests", "--env", "ci", "--image", IMAGE, "--wasm", str(WASM), "--assets", str(assets))
    assert r.returncode != 0 and "Kubernetes object" in r.stderr, r.stderr


def test_bad_names_are_clear_errors():
    r = understudy("manifests", "--env", "CI_Env", "--image", IMAGE, "--wasm", str(WASM))
    assert r.returncode != 0 and "--env" in r.stderr
    r = understudy("manifests", "--env", "ci", "--image", IMAGE, "--wasm", str(WASM), "--sha256", "abc")
    assert r.returncode != 0 and "64 lower-case hex" in r.stderr
