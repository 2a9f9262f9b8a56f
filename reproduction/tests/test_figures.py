"""The study's tables from the rows of its CSVs."""
from reproduction.figures import agc_table, norm_table


def test_tables_aggregate_seeds_and_mark_batch_independent_norms():
    rows = [{"norm": "bn", "micro_batch": str(b), "seed": str(s), "test_error": str(e), "diverged": "False"}
            for b, s, e in ((32, 0, 10.0), (32, 1, 12.0), (2, 0, 30.0), (2, 1, 34.0))]
    rows += [{"norm": "gn", "micro_batch": "all", "seed": str(s), "test_error": str(e), "diverged": "False"}
             for s, e in ((0, 20.0), (1, 22.0))]
    table = norm_table(rows, ("bn", "gn"), (32, 2))
    assert "| norm | 32 / GPU | 2 / GPU | 2 minus 32 |" in table
    assert "| bn | 11.00 ± 1.41 | 32.00 ± 2.83 | +21.00 |" in table
    assert "| gn | *21.00 ± 1.41* | *21.00 ± 1.41* | 0 (exact) |" in table
    agc = [{"model": "nf", "batch": "256", "base_lr": "1.6", "clip": c, "seed": str(s), "diverged": str(d),
            "final_train_loss": "nan" if d else "1.0", "test_error": "nan" if d else str(e)}
           for c, s, d, e in (("none", 0, True, 0), ("none", 1, False, 40.0), ("0.01", 0, False, 20.0),
                              ("0.01", 1, False, 24.0), ("0.04", 0, False, 30.0), ("0.04", 1, False, 30.0))]
    text = agc_table(agc)
    assert "| 256 | 1.6 | nf | none | 1/2 | 40.00 ± 0.00 | nan, 1.0 |" in text
    assert "| 256 | 1.6 | nf | 0.01 | 0/2 | 22.00 ± 2.83 | 1.0, 1.0 |" in text
    assert "| 256 | 1.6 | 0.01 (22.00 %) |" in text
    assert text.index("| nf | none |") < text.index("| nf | 0.01 |") < text.index("| nf | 0.04 |")
    stuck = [{**r, "test_error": "90.0"} for r in agc if r["diverged"] == "False"]
    assert "| 256 | 1.6 | no run learned |" in agc_table(stuck)
