#!/usr/bin/env python3
"""Splices one curve's Markdown section into bench/results/scale.md, keeping the other curves' sections.

    report.py RESULTS_FILE NAME SECTION_FILE

Sections live between `<!-- scale:NAME begin -->` and `<!-- scale:NAME end -->` and are kept in the order
body, assets, stream, workers (unknown names last), so `bench/scale.sh body` refreshes only the body curve.
"""

import re
import sys

ORDER = ["body", "assets", "stream", "workers"]
HEADER = """# Understudy scale curves

Produced by `bash bench/scale.sh` (all curves) or `bash bench/scale.sh body|assets|stream|workers` (one curve;
the other sections below are kept from their own earlier runs, each with its own date). Every curve starts its
own `understudy up` on loopback, checks that the answer is `200` with `x-understudy: hit` before measuring, and
counts hits/misses in Envoy's stats afterwards. Each section lists the exact commands (`$WORK` is the run's
temporary directory, deleted afterwards; ports are random free ones).
"""
SECTION = re.compile(r"<!-- scale:(\w+) begin -->\n.*?<!-- scale:\1 end -->\n", re.S)


def main():
    results, name, section_file = sys.argv[1:4]
    try:
        with open(results, encoding="utf-8") as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    sections = {m.group(1): m.group(0) for m in SECTION.finditer(old)}
    with open(section_file, encoding="utf-8") as f:
        body = f.read().rstrip("\n") + "\n"
    sections[name] = f"<!-- scale:{name} begin -->\n{body}<!-- scale:{name} end -->\n"
    names = sorted(sections, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    with open(results, "w", encoding="utf-8") as f:
        f.write(HEADER)
        for n in names:
            f.write("\n" + sections[n])


if __name__ == "__main__":
    main()
