#!/usr/bin/env python3
"""Summarises why `understudy up` / Envoy failed, from its log, on one Markdown-safe line.

    logerr.py LOG

Joins the filter's own error output (Rust prints a panic or an allocation failure in pieces, one Envoy log
line each), names the first two Understudy frames of the in-VM backtrace, and adds Envoy's first critical line and
the CLI's last word.
"""

import re
import sys

WASM_ERR = re.compile(r"\]\[error\]\[wasm\] \[[^\]]*\] wasm log \S+ \S+: ?(.*)$")
CRITICAL = re.compile(r"\]\[critical\]\[\w+\] \[[^\]]*\] (.*)$")
FRAME = re.compile(r"^\s*\d+:\s+0x[0-9a-f]+ - (.*)$")


def main():
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    wasm, frames, critical, last = [], [], None, None
    for line in lines:
        m = WASM_ERR.search(line)
        if m and not m.group(1).startswith("note: run with"):
            wasm.append(m.group(1))
        m = FRAME.match(line)
        if m:
            frames.append(m.group(1))
        m = CRITICAL.search(line)
        if m and critical is None:
            critical = m.group(1)
        if line.startswith("understudy: error:"):
            last = line
    parts = []
    if wasm:
        parts.append("filter: " + "".join(wasm)[:300])
    ours = [f for f in frames if "understudy" in f]
    if ours:
        names = []
        for f in ours[:2]:
            name = re.sub(r"::h[0-9a-f]{16}$", "", f)
            names.append(name.replace("$LT$", "<").replace("$GT$", ">").replace("$u20$", " ").replace("$C$", ","))
        parts.append("in " + " <- ".join(names))
    if critical:
        parts.append("envoy: " + critical)
    if last:
        parts.append(last)
    if not parts:
        parts = [(lines[-1] if lines else "empty log")[:300]]
    print("; ".join(parts).replace("|", "\\|").replace("`", "'"))


if __name__ == "__main__":
    main()
