"""The remote asset store through real Envoy: `understudy publish` → Debian's nginx on loopback →
`understudy up --store URL` with no bundle in the plugin configuration. Hits fetched once and then served from
the VM's cache, the cache's bound, a store that is down or hangs (the miss policy, within the timeout, nothing
upstream in strict mode), and an entry edited on the server (refused and counted).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (
    EXAMPLE_ASSETS,
    UNDERSTUDY,
    WASM,
    admin_get,
    assert_served_body,
    free_port,
    load_asset,
    register_log,
    stop_process,
    tail,
)

NGINX = Path("/usr/sbin/nginx")
ASSETS = ["openai/chat-capital.json", "anthropic/messages-haiku.json", "openai/embeddings-fox.json"]
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}


class Nginx:
    """nginx serving `root` on a loopback port, one process, access log of every request."""

    def __init__(self, root: Path, work: Path):
        self.root, self.work, self.port = root, work, free_port()
        (work / "tmp").mkdir(parents=True, exist_ok=True)
        self.access = work / "access.log"
        self.log = work / "nginx.log"
        conf = work / "nginx.conf"
        temp = "\n".join(f"  {k}_temp_path {work / 'tmp'};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf.write_text(f"""daemon off;
master_process off;
worker_processes 1;
error_log {work / 'error.log'};
pid {work / 'nginx.pid'};
events {{ worker_connections 256; }}
http {{
  access_log {self.access};
{temp}
  default_type application/json;
  server {{ listen 127.0.0.1:{self.port}; root {root}; }}
}}
""")
        assert NGINX.exists(), "nginx is missing: run `bash scripts/install-deploy-tools.sh`"
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen([str(NGINX), "-c", str(conf), "-p", str(work)], stdout=f,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                assert self.proc.poll() is None, f"nginx exited:\n{tail(self.log)}\n{tail(work / 'error.log')}"
                assert time.monotonic() < deadline, "nginx not ready"
                time.sleep(0.05)

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}{prefix}"

    def entry_gets(self) -> list[str]:
        """Paths of the entry files fetched so far (not the manifest)."""
        lines = self.access.read_text().splitlines() if self.access.exists() else []
        paths = [line.split('"')[1].split()[1] for line in lines if '"GET ' in line]
        return [p for p in paths if not p.endswith("understudy-store.json")]

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def published(tmp_path) -> tuple[Path, dict]:
    """examples/assets published to tmp/www/ci; the manifest."""
    out = tmp_path / "www" / "ci"
    r = subprocess.run([str(UNDERSTUDY), "publish", str(EXAMPLE_ASSETS), "--to", str(out), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


@pytest.fixture
def nginx(request, published, tmp_path):
    n = Nginx(published[0].parent, tmp_path / "nginx")
    register_log(request, "nginx error log", n.work / "error.log")
    yield n
    n.stop()


def stats(u) -> dict[str, int]:
    out = {}
    for line in admin_get(u.admin, "/stats?filter=wasmcustom.understudy").splitlines():
        name, _, value = line.strip().partition(": ")
        if value.isdigit():
            out[name.removeprefix("wasmcustom.understudy.")] = int(value)
    return out


def plugin_configuration(u) -> dict:
    """The plugin configuration Envoy runs the filter with (from /config_dump)."""
    found = []

    def walk(v):
        if isinstance(v, dict):
            c = v.get("configuration")
            if isinstance(c, dict) and isinstance(c.get("value"), str) and "on_miss" in c["value"]:
                found.append(json.loads(c["value"]))
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(json.loads(admin_get(u.admin, "/config_dump")))
    assert found, "no understudy plugin configuration in /config_dump"
    return found[0]


def send(u, rel: str):
    asset = load_asset(rel)
    return u.post(asset["request"].get("path") or PATHS[rel.split("/")[0]], asset["request"]["body"]), asset


def test_published_store_serves_hits_through_envoy_with_no_bundle_in_the_configuration(
        understudy_factory, upstream, nginx, published):
    u = understudy_factory(None, extra=["--store", nginx.url("/ci")])
    cfg = plugin_configuration(u)
    assert "bundle" not in cfg, "the store stands in for the inline bundle"
    assert cfg["store"]["sha256"] == published[1]["sha256"] and cfg["store"]["prefix"] == "/ci"
    before = upstream.snapshot()
    for rel in ASSETS:
        for how in ("fetched", "cached"):
            r, asset = send(u, rel)
            assert r.status == 200 and r.header("x-understudy") == "hit", (rel, r.status, r.body[:300])
            assert r.header("x-understudy-store") == how, (rel, r.headers)
            if rel.startswith("openai/chat") or rel.startswith("anthropic"):
                assert_served_body(r.json(), asset["response"]["body"])
    gets = nginx.entry_gets()
    assert len(gets) == len(ASSETS) and all(g.startswith("/ci/") for g in gets), gets
    # A request the store lacks: a 404 miss that says so, remembered (no second fetch).
    other = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "not published"}]}
    for _ in range(2):
        r = u.post("/v1/chat/completions", other)
        assert r.status == 404 and r.header("x-understudy-store") == "miss", (r.status, r.body[:300])
        assert "the store has no entry for this key" in r.json()["error"]["message"]
    assert len(nginx.entry_gets()) == len(ASSETS) + 1
    s = stats(u)
    assert (s["store_fetches"], s["store_errors"], s["hits"], s["misses"]) == (len(ASSETS) + 1, 0, 2 * len(ASSETS), 2), s
    upstream.assert_untouched_since(before)


def test_the_cache_keeps_its_bound(understudy_factory, nginx):
    u = understudy_factory(None, extra=["--store", nginx.url("/ci"), "--store-cache-entries", "2"])
    # Three keys in a cycle through an LRU cache of two: every request fetches; then one key stays cached.
    order = [ASSETS[0], ASSETS[1], ASSETS[2]] * 2 + [ASSETS[2]] * 3
    for rel in order:
        r, _ = send(u, rel)
        assert r.status == 200, (rel, r.status, r.body[:300])
    assert stats(u)["store_fetches"] == 6 == len(nginx.entry_gets()), (stats(u), nginx.entry_gets())


class HangingStore:
    """Serves the manifest, then holds every other request open without answering."""

    def __init__(self, manifest: bytes):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.manifest = manifest
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            data = c.recv(65536)
            if b"understudy-store.json" in data.split(b"\r\n", 1)[0]:
                c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                          + str(len(self.manifest)).encode() + b"\r\nconnection: close\r\n\r\n" + self.manifest)
                c.close()
            else:
                self.held.append(c)

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


def test_a_store_that_is_down_or_hangs_gets_the_miss_policy_within_the_timeout_never_the_upstream(
        understudy_factory, upstream, nginx, published):
    strict = understudy_factory(None, extra=["--store", nginx.url("/ci"), "--store-timeout-ms", "500"])
    lenient = understudy_factory(None, on_miss="passthrough", extra=["--store", nginx.url("/ci")])
    nginx.stop()
    before = upstream.snapshot()
    t0 = time.monotonic()
    r, _ = send(strict, ASSETS[0])
    assert time.monotonic() - t0 < 3
    assert r.status == 503 and r.json()["error"]["code"] == "understudy_store_unavailable", (r.status, r.body[:400])
    assert "could not ask the asset store" in r.json()["error"]["message"]
    assert stats(strict)["store_errors"] == 1
    upstream.assert_untouched_since(before)
    # Under passthrough the request goes on to the upstream once the store has failed.
    r, _ = send(lenient, ASSETS[0])
    assert r.status == 200 and r.header("x-understudy") == "passthrough", (r.status, r.headers)
    upstream.wait_for_requests(1)
    assert stats(lenient)["store_errors"] == 1
    # A store that accepts the call and never answers: the timeout ends the wait.
    hanging = HangingStore((published[0] / "understudy-store.json").read_bytes())
    try:
        u = understudy_factory(None, extra=["--store", f"http://127.0.0.1:{hanging.port}/ci",
                                            "--store-timeout-ms", "500"])
        before = upstream.snapshot()
        t0 = time.monotonic()
        r, _ = send(u, ASSETS[0])
        waited = time.monotonic() - t0
        assert r.status == 503 and 0.45 < waited < 3, (r.status, waited, r.body[:300])
        assert "timeout (500 ms)" in r.json()["error"]["message"], r.body[:400]
        upstream.assert_untouched_since(before)
        assert hanging.held, "the fetch reached the hanging store"
    finally:
        hanging.close()


def test_an_entry_edited_on_the_server_is_refused_and_counted(understudy_factory, upstream, nginx, published):
    u = understudy_factory(None, extra=["--store", nginx.url("/ci")])
    key = subprocess.run([str(UNDERSTUDY), "key", str(EXAMPLE_ASSETS / ASSETS[0])], capture_output=True, text=True,
                         timeout=30).stdout.split()[0]
    entry = published[0] / key[:2] / f"{key}.json"
    original = entry.read_text()
    assert "The capital of France is Paris." in original
    entry.write_text(original.replace("The capital of France is Paris.", "The capital of France is Lyon."))
    before = upstream.snapshot()
    r, _ = send(u, ASSETS[0])
    assert r.status == 503 and b"Lyon" not in r.body, (r.status, r.body[:400])
    assert "does not verify against the store's content hash" in r.json()["error"]["message"]
    assert stats(u)["store_errors"] == 1
    upstream.assert_untouched_since(before)
    assert "asset store error" in u.log_path.read_text(errors="replace")
    # Refusals are not cached: once the file is right again, the next request hits.
    entry.write_text(original)
    r, _ = send(u, ASSETS[0])
    assert r.status == 200 and b"Paris" in r.body


def test_a_bundle_embedded_in_the_packaged_module_serves_without_one_in_the_configuration(
        understudy_factory, upstream, tmp_path):
    module = tmp_path / "understudy-with-assets.wasm"
    r = subprocess.run([str(UNDERSTUDY), "package", "--assets", str(EXAMPLE_ASSETS), "--module-out", str(module),
                        "-o", str(tmp_path / "oci"), "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    import hashlib
    sha = hashlib.sha256(module.read_bytes()).hexdigest()
    # A module of its own, pinned by its own sha256, stored in the image as it is.
    assert out["module"]["sha256"] == sha
    assert (tmp_path / "oci" / "blobs" / "sha256" / sha).read_bytes() == module.read_bytes()
    u = understudy_factory(None, extra=["--wasm", str(module)])
    assert "bundle" not in plugin_configuration(u)
    assert "embedded in" in u.log_path.read_text(errors="replace")
    before = upstream.snapshot()
    for rel in ASSETS:
        r, asset = send(u, rel)
        assert r.status == 200 and r.header("x-understudy") == "hit", (rel, r.status, r.body[:300])
        assert r.header("x-understudy-store") is None
    upstream.assert_untouched_since(before)
    assert "bundle embedded in the module" in u.log_path.read_text(errors="replace")


def test_manifests_for_a_store_or_an_embedded_bundle_pin_what_they_name_and_validate(nginx, published, tmp_path):
    from test_manifests import IMAGE, docs, envoy_validate, manifests, schema_check

    out = manifests(tmp_path / "store", "--store", nginx.url("/ci"))
    plugin, _ = docs(out["istio.yaml"])[:2]
    store = plugin["spec"]["pluginConfig"]["store"]
    assert store["cluster"] == f"outbound|{nginx.port}||127.0.0.1" and store["sha256"] == published[1]["sha256"]
    for r in schema_check(out["istio.yaml"]):
        assert r["schema"] == "validated" and "error" not in r, r
    boot = out["envoy.yaml"].read_text()
    assert store["cluster"] in boot, "plain Envoy defines the store's cluster"
    r = envoy_validate(out["envoy.yaml"])
    assert r.returncode == 0, r.stderr[-3000:]
    # --embed: the pinned digest is the image `package --assets` builds, and the pluginConfig has no bundle.
    out = manifests(tmp_path / "embed", "--embed")
    plugin, _ = docs(out["istio.yaml"])[:2]
    assert "bundle" not in plugin["spec"]["pluginConfig"]
    r = subprocess.run([str(UNDERSTUDY), "package", "--wasm", str(WASM), "--assets", str(EXAMPLE_ASSETS), "--json",
                        "-o", str(tmp_path / "oci")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pkg = json.loads(r.stdout)
    assert plugin["spec"]["sha256"] == pkg["wasm_artifact"]["digest"].removeprefix("sha256:")
    ecds = docs(out["understudy-ecds.yaml"])[0]
    assert ecds["resources"][0]["typed_config"]["config"]["vm_config"]["code"]["remote"]["sha256"] == pkg["module"]["sha256"]
    assert IMAGE.split(":")[0] in plugin["spec"]["url"]
