"""The notebook's series styles: one look per series, new policy names included, and panels."""

from pcjax.cache.policies import all_policies
from pcjax.sim import plot_styles

SEQUENTIAL_ROWS = [
    *all_policies(),
    "belady",
    "infinite",
    "oracle_lru",
    *(f"{kind}:{f}" for kind in ("bound", "hindsight") for f in ("none", "uses", "uses+gap")),
    "bound:uses+gap+size",
    "hindsight:uses+gap+size",
]


def _look(style):
    return (style.color, style.marker, style.linestyle)


def test_every_series_of_a_figure_has_its_own_color_and_marker():
    names = list(dict.fromkeys([*SEQUENTIAL_ROWS, "adaptive", "some_future_policy"]))
    styles = plot_styles.series_styles(names)
    assert set(styles) == set(names)
    assert len({_look(s) for s in styles.values()}) == len(names)
    colors = [s.color for n, s in styles.items() if n not in ("belady", "infinite")]
    assert len(set(colors)) == len(colors), "no two series share a color"


def test_known_names_keep_their_style_whatever_else_is_plotted():
    alone = plot_styles.series_styles(["lfu"])["lfu"]
    assert plot_styles.series_styles(SEQUENTIAL_ROWS)["lfu"] == alone == plot_styles.FIXED["lfu"]
    assert plot_styles.FIXED["lfu"].color != plot_styles.FIXED["hindsight:none"].color


def test_online_policies_and_bounds_go_to_separate_panels():
    online = [n for n in SEQUENTIAL_ROWS if plot_styles.in_panel(n, "online")]
    bounds = [n for n in SEQUENTIAL_ROWS if plot_styles.in_panel(n, "bounds")]
    assert plot_styles.panel_of("adaptive") == plot_styles.panel_of("new_policy") == "online"
    assert not any(n.startswith(("bound:", "hindsight:")) for n in online)
    assert set(online) & set(bounds) == {"lru", "belady"}
    assert "infinite" in bounds and "slru" in online and "hindsight:uses" in bounds
