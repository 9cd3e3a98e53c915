#!/usr/bin/env python3
"""Writes models/demo/corpus.jsonl: the corpus the demo's default PCA head was fitted on.

Short text items taken from the license texts every Debian/Ubuntu machine has offline
(/usr/share/common-licenses): the distinct lines of 40-160 characters, whitespace collapsed, in
file-name order, then every k-th so that 300 items span all the files. Another machine with other
license files gives a different corpus (and, refitted, a different head).

    python3 models/demo/make_corpus.py
    cargo run --release -p marc-server -- head init --model models/demo \
        --corpus models/demo/corpus.jsonl --layer 5 --dim 64 --name default
"""

import json
import pathlib

ITEMS = 300
SOURCE = pathlib.Path("/usr/share/common-licenses")
OUT = pathlib.Path(__file__).resolve().parent / "corpus.jsonl"

seen, lines = set(), []
for path in sorted(p for p in SOURCE.iterdir() if p.is_file()):
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = " ".join(raw.split())
        if 40 <= len(line) <= 160 and line not in seen:
            seen.add(line)
            lines.append((path.name, line))

step = len(lines) / ITEMS
chosen = [lines[int(i * step)] for i in range(ITEMS)]
with OUT.open("w", encoding="utf-8") as f:
    for i, (name, line) in enumerate(chosen):
        f.write(json.dumps({"id": f"{name}-{i}", "text": line}, ensure_ascii=False) + "\n")
print(f"wrote {len(chosen)} items (of {len(lines)} distinct lines) to {OUT}")
