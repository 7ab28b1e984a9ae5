"""An independent CEF:0 line parser for tests (not rotator's formatter)."""

from __future__ import annotations

import re


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """Split a CEF line: 7 header fields on unescaped pipes, then key=value pairs on
    unescaped equals signs; values unescaped. Independent of rotator's formatter."""
    fields: list[str] = []
    cur = ""
    i = 0
    while len(fields) < 7:
        ch = line[i]
        if ch == "\\":
            cur += {"n": "\n", "r": "\r"}.get(line[i + 1], line[i + 1])
            i += 2
            continue
        if ch == "|":
            fields.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    rest = line[i:]
    assert "\n" not in rest
    assert "\r" not in rest
    ext: dict[str, str] = {}
    # Keys start at the line's start or after a space, and end at an unescaped '='.
    parts = re.split(r"(?:^| )(\w+)=(?<!\\=)", rest)
    assert parts[0] == ""
    for key, raw in zip(parts[1::2], parts[2::2], strict=True):
        ext[key] = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m[1], m[1]), raw)
    return fields, ext
