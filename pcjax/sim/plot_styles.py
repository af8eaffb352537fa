"""How the eviction notebook draws each policy: one fixed color + marker + line per series name,
and which panel a series belongs to. Plain data (matplotlib format strings), no plotting here.

Panels: "online" holds the policies an engine can run (any name, new ones included), with LRU and
Belady as references; "bounds" holds the class bounds (``bound:<features>``) and their hindsight
replays (``hindsight:<features>``), with the same references and the infinite-cache bound.

Every known name has its own entry in `FIXED`; a name not listed there (a policy added later)
gets the first (color, marker) pair no listed name uses, in sorted-name order, so
the series of one figure never share a look:

    >>> styles = series_styles(["lru", "my_policy", "slru"])
    >>> styles["my_policy"] != styles["slru"] != styles["lru"]
    True
"""

from typing import NamedTuple


class SeriesStyle(NamedTuple):
    color: str
    marker: str
    linestyle: str = "-"
    linewidth: float = 1.5


REFERENCES = ("lru", "belady")  # drawn in both panels
BOUND_REFERENCES = ("infinite",)  # drawn in the bounds panel only
BOUND_PREFIXES = ("bound:", "hindsight:")
OURS = ("deadline", "learned_hold", "adaptive")  # drawn thicker

FIXED: dict[str, SeriesStyle] = {
    "belady": SeriesStyle("#000000", "", "--", 2.0),
    "infinite": SeriesStyle("#000000", "", ":", 2.0),
    "lru": SeriesStyle("#1f77b4", "o"),
    "oracle_lru": SeriesStyle("#7f7f7f", "x", "-."),
    "fifo": SeriesStyle("#ff7f0e", "s"),
    "lfu": SeriesStyle("#2ca02c", "^"),
    "slru": SeriesStyle("#d62728", "v"),
    "s3fifo": SeriesStyle("#9467bd", "D"),
    "gdsf": SeriesStyle("#8c564b", "P"),
    "deadline": SeriesStyle("#e377c2", "*", "-", 2.5),
    "learned_hold": SeriesStyle("#17becf", "X", "-", 2.5),
    "adaptive": SeriesStyle("#006d2c", "h", "-", 2.5),
    "bound:none": SeriesStyle("#bcbd22", "", "--"),
    "bound:uses": SeriesStyle("#ff9896", "", "--"),
    "bound:uses+gap": SeriesStyle("#98df8a", "", "--"),
    "bound:uses+gap+size": SeriesStyle("#c5b0d5", "", "--"),
    "hindsight:none": SeriesStyle("#6b6ecf", "o"),
    "hindsight:uses": SeriesStyle("#e6550d", "s"),
    "hindsight:uses+gap": SeriesStyle("#31a354", "^"),
    "hindsight:uses+gap+size": SeriesStyle("#843c39", "D"),
}
SPARE_COLORS = ("#393b79", "#637939", "#8c6d31", "#7b4173", "#3182bd", "#e7ba52", "#ad494a")
SPARE_MARKERS = ("h", "p", "<", ">", "d", "8", "H")


def panel_of(name: str) -> str:
    """ "bounds" for ``bound:*``, ``hindsight:*`` and the infinite cache, else "online"."""
    bound = name.startswith(BOUND_PREFIXES) or name in BOUND_REFERENCES
    return "bounds" if bound else "online"


def in_panel(name: str, panel: str) -> bool:
    """Whether series ``name`` is drawn in ``panel`` (the references are drawn in both)."""
    return name in REFERENCES or panel_of(name) == panel


def series_styles(names) -> dict[str, SeriesStyle]:
    """A style per name: `FIXED`'s, else the next unused spare pair (see the module docstring)."""
    styles = {n: FIXED[n] for n in names if n in FIXED}
    spares = [(c, m) for m in SPARE_MARKERS for c in SPARE_COLORS]
    used = {(s.color, s.marker) for s in FIXED.values()}
    free = iter(pair for pair in spares if pair not in used)
    for name in sorted(set(names) - set(styles)):
        color, marker = next(free)
        linestyle = "--" if name.startswith("bound:") else "-"
        styles[name] = SeriesStyle(color, marker, linestyle, 2.5 if name in OURS else 1.5)
    return styles
