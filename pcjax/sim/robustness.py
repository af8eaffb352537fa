"""The robustness table of an eviction sweep: per policy, its worst loss against LRU over every
(trace, capacity) cell, its worst gap to the best single online policy, and its mean fraction of
Belady. One function, shared by ``experiments/compare_eviction.py`` and the notebook.

Rows are those of ``compare_eviction`` (``trace``, ``policy``, ``capacity_tokens``,
``token_hit_rate``; ``fraction_of_belady`` where Belady ran). Bounds (``belady``, ``oracle_lru``,
``infinite``, ``bound:*``, ``hindsight:*``) are no online policies: they get no entry and are never
the "best single" policy. Host-only: plain Python.

Example::

    rows = [dict(trace="t", policy="lru", capacity_tokens=1, token_hit_rate=0.50),
            dict(trace="t", policy="deadline", capacity_tokens=1, token_hit_rate=0.52)]
    robustness_table(rows)["deadline"]["worst_vs_lru"]     # +2.0 (points)
    robustness_table(rows)["lru"]["worst_vs_best"]         # -2.0
"""

BOUND_NAMES = ("belady", "oracle_lru", "infinite")


def is_online(policy: str) -> bool:
    """Whether ``policy`` names an online policy (not a bound or a hindsight replay)."""
    return policy not in BOUND_NAMES and ":" not in policy


def robustness_table(
    rows: list[dict], selectors: dict[str, tuple[str, ...]] | None = None
) -> dict[str, dict]:
    """Per online policy: ``worst_vs_lru`` and ``worst_vs_best`` (token hit rate minus LRU's /
    minus the best online policy's in the same cell, in points; the minimum over cells, with the
    cell as ``(trace, capacity_tokens)`` in ``worst_vs_lru_cell`` / ``worst_vs_best_cell``),
    ``mean_fraction_of_belady`` (over the cells where Belady ran; None if none) and ``cells``.
    A cell without an LRU row counts for ``worst_vs_best`` only. ``selectors`` maps a policy that
    picks among candidates (``adaptive``) to their names: it also gets ``worst_vs_candidates``
    (and ``worst_vs_candidates_cell``), against the best of those that ran in the cell."""
    cells: dict[tuple, dict[str, float]] = {}
    fractions: dict[str, list[float]] = {}
    for r in rows:
        if is_online(r["policy"]):
            cells.setdefault((r["trace"], r["capacity_tokens"]), {})[r["policy"]] = r[
                "token_hit_rate"
            ]
            if r.get("fraction_of_belady") is not None:
                fractions.setdefault(r["policy"], []).append(r["fraction_of_belady"])
    table: dict[str, dict] = {}
    for cell, hits in cells.items():
        best, lru = max(hits.values()), hits.get("lru")
        for policy, hit in hits.items():
            entry = table.setdefault(
                policy,
                {
                    "worst_vs_lru": None,
                    "worst_vs_lru_cell": None,
                    "worst_vs_best": 0.0,
                    "worst_vs_best_cell": None,
                    "cells": 0,
                },
            )
            entry["cells"] += 1
            if lru is not None:
                loss = 100 * (hit - lru)
                if entry["worst_vs_lru"] is None or loss < entry["worst_vs_lru"]:
                    entry["worst_vs_lru"], entry["worst_vs_lru_cell"] = loss, list(cell)
            gap = 100 * (hit - best)
            if entry["worst_vs_best_cell"] is None or gap < entry["worst_vs_best"]:
                entry["worst_vs_best"], entry["worst_vs_best_cell"] = gap, list(cell)
            ran = [hits[c] for c in (selectors or {}).get(policy, ()) if c in hits]
            if ran:
                gap = 100 * (hit - max(ran))
                if (
                    entry.get("worst_vs_candidates_cell") is None
                    or gap < entry["worst_vs_candidates"]
                ):
                    entry["worst_vs_candidates"] = gap
                    entry["worst_vs_candidates_cell"] = list(cell)
    for policy, entry in table.items():
        f = fractions.get(policy)
        entry["mean_fraction_of_belady"] = sum(f) / len(f) if f else None
    return table


def format_table(table: dict[str, dict]) -> str:
    """The table as text, one line per policy, best worst-case against LRU first; then each
    selector's worst gap to its best candidate."""
    lines = [
        f"{'policy':>13} {'worst vs LRU':>13} {'at':>26} {'worst vs best':>14} {'at':>26} "
        f"{'mean of Belady':>15}"
    ]
    order = sorted(table, key=lambda p: -(table[p]["worst_vs_lru"] or 0.0))
    for p in order:
        e = table[p]
        vs_lru = "" if e["worst_vs_lru"] is None else f"{e['worst_vs_lru']:+.2f}"
        frac = "" if e["mean_fraction_of_belady"] is None else f"{e['mean_fraction_of_belady']:.3f}"
        lines.append(
            f"{p:>13} {vs_lru:>13} {_cell(e['worst_vs_lru_cell']):>26} "
            f"{e['worst_vs_best']:>+14.2f} {_cell(e['worst_vs_best_cell']):>26} {frac:>15}"
        )
    for p in order:
        if "worst_vs_candidates" in table[p]:
            e = table[p]
            lines.append(
                f"{p}: worst vs its best candidate {e['worst_vs_candidates']:+.2f} "
                f"at {_cell(e['worst_vs_candidates_cell'])}"
            )
    return "\n".join(lines)


def _cell(cell) -> str:
    return "" if cell is None else f"{cell[0]} {cell[1]:,}"
