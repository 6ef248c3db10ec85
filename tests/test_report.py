"""`rbnn report` on a run and on an ablation folder, and `rbnn ablate`'s table against the runs it made."""

import csv
import json

from rbnn.cli import main

SYN = ["threads=1", "data=synthetic", "data.subset=192", "data.test_subset=64", "batch_size=64", "export=false",
       "model=smallnet", "epochs=2"]


def test_report_of_an_rbnn_run_has_every_plot(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "method=rbnn", f"out={run}", *SYN]) == 0
    assert main(["report", str(run)]) == 0
    index = (run / "report" / "index.html").read_text()
    for name in ("curves", "flip_rate", "angle_qerr", "alpha", "histograms", "surrogates", "oscillation"):
        png = run / "report" / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 5000, name
        assert f'src="{name}.png"' in index
    assert "test_acc" in index  # the summary table


def test_ablate_table_matches_runs_and_writes_comparison(tmp_path, capsys):
    cfg = tmp_path / "abl.yaml"
    cfg.write_text("methods: [xnor, rbnn]\n")
    out = tmp_path / "abl"
    assert main(["ablate", "--config", str(cfg), "--seeds", "2", "--out", str(out), *SYN]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    # seed-major order, one row per (method, seed), values taken from each run's summary
    assert [(r["method"], r["seed"]) for r in rows] == [("xnor", "0"), ("rbnn", "0"), ("xnor", "1"), ("rbnn", "1")]
    for r in rows:
        s = json.loads((out / f"{r['method']}-s{r['seed']}" / "summary.json").read_text())
        assert float(r["test_acc"]) == s["test_acc"]
    accs = [float(r["test_acc"]) for r in rows if r["method"] == "rbnn"]
    mean = 100 * sum(accs) / 2
    table = (out / "results.md").read_text()
    assert f"| rbnn | 2 | {mean:.2f} ± " in table
    assert (out / "report" / "compare.png").stat().st_size > 5000
    assert "comparison plots" in capsys.readouterr().out
    # `rbnn report` on the ablation folder rebuilds the comparison
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "compare.png").is_file()


def test_ablate_split_across_processes_with_only_seeds(tmp_path):
    cfg = tmp_path / "abl.yaml"
    cfg.write_text("methods: [xnor]\n")
    out = tmp_path / "abl"
    args = ["ablate", "--config", str(cfg), "--seeds", "2", "--out", str(out), *SYN[:-1], "epochs=1"]
    assert main([*args, "--only-seeds", "1"]) == 0
    assert not (out / "xnor-s0").exists() and (out / "xnor-s1" / "summary.json").is_file()
    assert [r["seed"] for r in csv.DictReader((out / "results.csv").open())] == ["1"]
    mtime = (out / "xnor-s1" / "summary.json").stat().st_mtime_ns
    assert main([*args, "--only-seeds", "0"]) == 0  # trains s0, reads s1 from disk
    assert [r["seed"] for r in csv.DictReader((out / "results.csv").open())] == ["0", "1"]
    assert (out / "xnor-s1" / "summary.json").stat().st_mtime_ns == mtime
    assert main([*args, "--only-seeds", "x"]) == 2
