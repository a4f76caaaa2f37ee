#!/usr/bin/env python3
"""Compare two scenario.py result documents.

    python compare.py direct.json gateway.json

Exits 0 when the documents are equal (ignoring the run-specific "meta"
section), 1 when they differ or either run recorded a failure (with a readable
list of differences on stdout), 2 on usage or read errors.
"""

from __future__ import annotations

import json
import sys
from typing import Any

IGNORED_TOP_LEVEL = ("meta",)
MAX_REPORTED = 50


def load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: top level is not a JSON object")
    return doc


def short(v: Any) -> str:
    s = json.dumps(v, ensure_ascii=False, sort_keys=True)
    return s if len(s) <= 200 else s[:197] + "..."


def diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if type(a) is not type(b):
        out.append(f"{path}: type {type(a).__name__} != {type(b).__name__}\n    left:  {short(a)}\n    right: {short(b)}")
    elif isinstance(a, dict):
        for k in list(a) + [k for k in b if k not in a]:
            p = f"{path}.{k}" if path else str(k)
            if k not in b:
                out.append(f"{p}: only in left: {short(a[k])}")
            elif k not in a:
                out.append(f"{p}: only in right: {short(b[k])}")
            else:
                diff(a[k], b[k], p, out)
        # key order matters for readability only, not equality
    elif isinstance(a, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", out)
        for i in range(len(b), len(a)):
            out.append(f"{path}[{i}]: only in left: {short(a[i])}")
        for i in range(len(a), len(b)):
            out.append(f"{path}[{i}]: only in right: {short(b[i])}")
    elif a != b:
        out.append(f"{path}:\n    left:  {short(a)}\n    right: {short(b)}")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    left_path, right_path = argv[1], argv[2]
    try:
        left, right = load(left_path), load(right_path)
    except (OSError, ValueError) as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2

    problems: list[str] = []
    for path, doc in ((left_path, left), (right_path, right)):
        if "failed" in doc:
            problems.append(f"{path}: run FAILED: {short(doc['failed'])}")
        if not doc.get("steps"):
            problems.append(f"{path}: no steps recorded")

    differences: list[str] = []
    diff(
        {k: v for k, v in left.items() if k not in IGNORED_TOP_LEVEL},
        {k: v for k, v in right.items() if k not in IGNORED_TOP_LEVEL},
        "",
        differences,
    )

    if not problems and not differences:
        print(f"compare.py: equal ({len(left['steps'])} steps): {left_path} == {right_path}")
        return 0

    print(f"compare.py: left = {left_path}, right = {right_path}")
    for p in problems:
        print(p)
    if differences:
        print(f"{len(differences)} difference(s):")
        for d in differences[:MAX_REPORTED]:
            print(f"  {d}")
        if len(differences) > MAX_REPORTED:
            print(f"  ... and {len(differences) - MAX_REPORTED} more")
    return 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except BrokenPipeError:  # eg: piped into head
        sys.exit(1)
