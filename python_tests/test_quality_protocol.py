"""The hard-world quality protocol end to end at the CI size (`mavis eval --world hard --quick`):
real training on the train prompts only, exact evaluation, selection on the validation prompts,
aggregation over seeds, resumption, and the command line's argument checks."""

from __future__ import annotations

import copy
import json
import os

import pytest

from mavis_ext.quality_protocol import HardSettings, quick_settings, run_hard_benchmark


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hard") / "res")
    s = quick_settings(out_dir=out)
    summary = run_hard_benchmark(s, log=lambda *a: None)
    return s, summary


@pytest.mark.slow
def test_quick_run_outputs_and_exact_bounds(quick_run):
    s, summ = quick_run
    for f in ("report.md", "summary.json"):
        assert os.path.getsize(os.path.join(s.out_dir, f)) > 500
    assert not os.path.exists(os.path.join(s.out_dir, "work"))  # checkpoints removed by default
    text = open(os.path.join(s.out_dir, "report.md")).read()
    assert "## Targets" in text and "ceiling" in text
    for key in ("m2_beta3", "m3_beta3"):
        r = summ["results"][key]
        assert len(r["points"]) == (5 if key.startswith("m2") else 6)
        for p in r["points"]:
            for set_name in ("train", "test"):
                # nothing a top-k method does beats the top-k optimum; the full optimum is at least as good
                for name in ("ceiling", "exact_last", "mavis_last", "mavis_sel", "mavis_it0", "mavis_it1"):
                    assert p[f"{name}@{set_name}"]["mean"] <= 1 + 1e-9, (key, name)
                assert p[f"gap@{set_name}"]["mean"] >= -1e-9
                assert p[f"gain_k@{set_name}"]["mean"] > 0
                assert len(p[f"mavis_last@{set_name}"]["per_seed"]) == len(s.seeds)
    # the trained models improve on top-k sampling on the training prompts (share > 0 on average)
    assert summ["results"]["m2_beta3"]["worst"]["mavis_last@train"]["mean_of_mean"] > 0.2
    assert [t["met"] in (True, False) for t in summ["targets"]]
    pytest.importorskip("matplotlib")
    assert os.path.getsize(os.path.join(s.out_dir, "shares_two_objectives.png")) > 5000


@pytest.mark.slow
def test_held_out_prompts_never_reach_training(quick_run):
    from mavis_ext.hard_world import default_prompts, split_prompts

    s, _ = quick_run
    prompts = default_prompts()
    for seed in s.seeds:
        run = json.load(open(os.path.join(s.out_dir, "runs", f"seed{seed}_beta3.json")))
        sp = split_prompts(seed)
        assert run["split"] == sp
        train = {prompts[i] for i in sp["train"]}
        assert set(run["prompts_trained"]) == train   # every train prompt got trees, nothing else did


@pytest.mark.slow
def test_selection_never_looks_at_the_reported_prompts(quick_run, tmp_path):
    """Scrambling the test and train prompts' J of every trained iteration leaves the chosen
    iteration unchanged; scrambling the validation prompts' J changes it."""
    import shutil

    from mavis_ext.quality_report import aggregate

    s, summ = quick_run
    before = summ["results"]["m2_beta3"]["selected_iteration"]

    def scrambled(sets, out):
        s2 = copy.deepcopy(s)
        s2.out_dir = str(out)
        shutil.copytree(os.path.join(s.out_dir, "runs"), os.path.join(out, "runs"))
        for seed in s.seeds:
            path = os.path.join(out, "runs", f"seed{seed}_beta3.json")
            run = json.load(open(path))
            chosen = before[str(seed)]
            for name, per_w in run["policies"].items():
                if not name.startswith("mavis_it"):
                    continue
                bonus = 10.0 if name != f"mavis_it{chosen}" else -10.0   # make every other iteration look best
                for rec in per_w.values():
                    for set_name in sets:
                        for i in run["split"][set_name]:
                            rec["J"][i] += bonus
            json.dump(run, open(path, "w"))
        return aggregate(s2)["results"]["m2_beta3"]["selected_iteration"]

    assert scrambled(("train", "test"), tmp_path / "a") == before
    assert scrambled(("val",), tmp_path / "b") != before


@pytest.mark.slow
def test_rerun_resumes_and_refuses_other_settings(quick_run):
    s, _ = quick_run
    runs = os.path.join(s.out_dir, "runs")
    mtimes = {f: os.path.getmtime(os.path.join(runs, f)) for f in os.listdir(runs)}
    run_hard_benchmark(copy.deepcopy(s), log=lambda *a: None)
    assert {f: os.path.getmtime(os.path.join(runs, f)) for f in os.listdir(runs)} == mtimes
    other = copy.deepcopy(s)
    other.epochs += 1
    with pytest.raises(ValueError, match="different settings"):
        run_hard_benchmark(other, log=lambda *a: None)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="seeds"):
        HardSettings(seeds=(0, 0)).validate()
    with pytest.raises(ValueError, match="betas"):
        HardSettings(betas=(0.0,)).validate()
    with pytest.raises(ValueError, match="top_k"):
        HardSettings(top_k=17).validate()
    with pytest.raises(ValueError, match="trees_per_prompt"):
        HardSettings(trees_per_prompt=1).validate()
    assert HardSettings(jobs=2).key_hash() == HardSettings(jobs=1, out_dir="x").key_hash()
    assert HardSettings(epochs=2).key_hash() != HardSettings().key_hash()


def test_eval_command_rejects_options_of_the_other_world(tmp_path):
    from mavis_ext.cli import main

    out = str(tmp_path / "o")
    with pytest.raises(ValueError, match="--objectives: only applies to --world demo"):
        main(["eval", "--world", "hard", "--objectives", "positive", "--out", out])
    with pytest.raises(ValueError, match="--seeds: only applies to --world hard"):
        main(["eval", "--seeds", "1", "--out", out])
    with pytest.raises(ValueError, match="--betas"):
        main(["eval", "--world", "hard", "--beta", "2", "--out", out])
    with pytest.raises(ValueError, match="--top-k"):
        main(["eval", "--world", "hard", "--quick", "--top-k", "17", "--out", out])
    with pytest.raises(ValueError, match="--seeds"):
        main(["eval", "--world", "hard", "--seeds", "a", "--out", out])
    assert not os.path.exists(out)


@pytest.mark.slow
def test_parallel_jobs_give_the_same_numbers(tmp_path):
    """Two worker processes (spawned, one thread each) reproduce the sequential run exactly: the
    world, the training runs and every exact J are the same (only the timings differ)."""
    tiny = dict(seeds=(3,), betas=(1.0, 3.0), horizon=2, top_k=3, iterations=1, trees_per_prompt=2, epochs=1,
                grid2=3, grid3=2, base_train_steps=30, corpus_per_prompt=40)
    a = quick_settings(out_dir=str(tmp_path / "seq"), jobs=1, **tiny)
    b = quick_settings(out_dir=str(tmp_path / "par"), jobs=2, **tiny)
    run_hard_benchmark(a, log=lambda *x: None)
    run_hard_benchmark(b, log=lambda *x: None)
    names = sorted(os.listdir(os.path.join(a.out_dir, "runs")))
    assert names == sorted(os.listdir(os.path.join(b.out_dir, "runs"))) and len(names) == 3
    for n in names:
        ra = json.load(open(os.path.join(a.out_dir, "runs", n)))
        rb = json.load(open(os.path.join(b.out_dir, "runs", n)))
        ra.pop("timings")
        rb.pop("timings")
        assert ra == rb, n
