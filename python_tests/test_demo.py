"""The main job runs end to end (`mavis demo --quick`): testbed, real training, exact sweep,
table, plots, samples, latency table."""

from __future__ import annotations

import json
import os

import pytest


@pytest.mark.slow
def test_demo_quick_runs(tmp_path, capsys):
    from mavis_ext.cli import main

    out = tmp_path / "demo"
    rc = main(["demo", "--quick", "--out", str(out), "--no-progress", "--samples", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "J optimum" in text and "mavis_it1" in text
    assert "Sampled responses" in text
    assert "speedup" in text  # the op-latency table
    res = json.load(open(out / "quality.json"))
    rows = res["rows"]
    assert len(rows) == 11
    for r in rows:
        p = r["policies"]
        # exact: nothing beats the optimum; MAVIS actually improves on the base model
        for name, v in p.items():
            assert v["J"] <= p["optimum"]["J"] + 1e-9, name
        assert p["mavis_it1"]["recovered"] > 0.5
    assert os.path.getsize(out / "quality.md") > 500
    pytest.importorskip("matplotlib")
    assert os.path.getsize(out / "pareto_fronts.png") > 5000


def test_demo_rejects_bad_arguments(tmp_path):
    from mavis_ext.cli import main

    with pytest.raises(ValueError, match="--iterations"):
        main(["demo", "--quick", "--iterations", "0", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--threads"):
        main(["demo", "--quick", "--threads", "0", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--beta"):
        main(["demo", "--quick", "--beta", "-1", "--out", str(tmp_path)])
