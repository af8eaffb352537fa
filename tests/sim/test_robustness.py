"""The robustness table on hand-made rows."""

from pcjax.sim.robustness import format_table, is_online, robustness_table


def row(trace, policy, cap, hit, frac=None):
    r = dict(trace=trace, policy=policy, capacity_tokens=cap, token_hit_rate=hit)
    return r | ({"fraction_of_belady": frac} if frac is not None else {})


ROWS = [
    row("a", "lru", 1, 0.50, 0.5),
    row("a", "deadline", 1, 0.55, 0.55),
    row("a", "belady", 1, 1.00, 1.0),
    row("a", "lru", 2, 0.80, 0.8),
    row("a", "deadline", 2, 0.77, 0.77),
    row("a", "belady", 2, 1.00, 1.0),
    row("b", "lru", 1, 0.30),
    row("b", "deadline", 1, 0.31),
    row("b", "bound:uses", 1, 0.9),
]


def test_worst_loss_against_lru_and_best():
    table = robustness_table(ROWS)
    assert set(table) == {"lru", "deadline"}
    d, lru = table["deadline"], table["lru"]
    assert abs(d["worst_vs_lru"] - -3.0) < 1e-9 and d["worst_vs_lru_cell"] == ["a", 2]
    assert abs(d["worst_vs_best"] - -3.0) < 1e-9 and d["cells"] == 3
    assert lru["worst_vs_lru"] == 0.0 and abs(lru["worst_vs_best"] - -5.0) < 1e-9
    assert lru["worst_vs_best_cell"] == ["a", 1]
    assert abs(d["mean_fraction_of_belady"] - 0.66) < 1e-9
    text = format_table(table)
    assert text.splitlines()[1].split()[0] == "lru"  # the smaller worst loss first
    assert "-3.00" in text


def test_a_selector_is_measured_against_its_candidates():
    rows = [*ROWS, row("a", "adaptive", 1, 0.54), row("a", "adaptive", 2, 0.79)]
    rows += [row("a", "fifo", 1, 0.60), row("a", "fifo", 2, 0.60)]
    table = robustness_table(rows, {"adaptive": ("lru", "deadline")})
    a = table["adaptive"]
    assert abs(a["worst_vs_candidates"] - -1.0) < 1e-9 and a["worst_vs_candidates_cell"] == ["a", 1]
    assert abs(a["worst_vs_best"] - -6.0) < 1e-9  # fifo is no candidate
    assert "worst_vs_candidates" not in table["lru"]
    assert "adaptive: worst vs its best candidate -1.00 at a 1" in format_table(table)


def test_bounds_are_not_online():
    assert not any(is_online(p) for p in ("belady", "oracle_lru", "infinite", "bound:uses"))
    assert is_online("adaptive")
