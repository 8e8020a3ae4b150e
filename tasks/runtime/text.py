"""How the tool writes a content hash and a byte count for people: one spelling of each."""

from __future__ import annotations


def short(sha: str) -> str:
    return sha[:12]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"
