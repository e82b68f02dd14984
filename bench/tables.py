"""Table formatting (and timing) shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown pipe table, padded so it also reads aligned as plain text (numbers right)."""
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                 enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def median_seconds(fn: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    """Median wall time of ``repeats`` calls of ``fn``, after one untimed warm-up call unless ``warm_up`` is False."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def require_native_kernels() -> None:
    """Stop the benchmark with the reason when the hnnx native kernels are not active."""
    from hnnx.runtime import native

    status = native.status()
    if not status.active:
        raise SystemExit(f"the native kernels are not active ({status.reason}): run hnnx doctor --build")
