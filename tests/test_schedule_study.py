"""scripts/schedule_study.py: the tables a long-schedule study is reported with (numbers checked by hand)."""

import csv
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "schedule_study.py"
spec = importlib.util.spec_from_file_location("schedule_study", SCRIPT)
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def _run(root: Path, name: str, accs: list[float], flips: tuple[float, float] = (0.1, 0.3)) -> None:
    d = root / name
    d.mkdir(parents=True)
    with (d / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "test_acc", "flip_init", "a/flip_random_rotation", "b/flip_random_rotation"])
        for e, a in enumerate(accs):
            w.writerow([e + 1, a, 0.05, *flips])


def test_gaps_are_paired_by_seed_and_unfinished_runs_stay_out_of_the_mean(tmp_path, capsys):
    _run(tmp_path, "irnet-s0", [0.5, 0.70])
    _run(tmp_path, "irnet-s1", [0.5, 0.80])
    _run(tmp_path, "rbnn-s0", [0.5, 0.72])
    _run(tmp_path, "rbnn-s1", [0.5, 0.76])
    _run(tmp_path, "rbnn-s2", [0.9])  # unfinished: one epoch of two
    short = tmp_path / "short.csv"
    short.write_text("method,seed,test_acc\nirnet,0,0.6\nrbnn,0,0.5\nirnet,1,0.7\nrbnn,1,0.55\n")
    assert study.main([str(tmp_path), "--short", str(short), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    # 16-epoch-style column: rbnn 72 / 76 -> 74.00 ± 2.83; the unfinished seed is shown with * but not averaged
    assert "| rbnn | 74.00 ± 2.83 | 72.00 / 76.00 / 90.00* |" in out
    # paired gaps: short -10, -15 -> -12.50 ± 3.54; long +2, -4 -> -1.00 ± 4.24
    assert "| rbnn − irnet | -12.50 ± 3.54 | -10.00 / -15.00 | -1.00 ± 4.24 | +2.00 / -4.00 |" in out
    # the random-rotation control is the mean over layers (0.1, 0.3 -> 20.0 %)
    assert "| irnet | 5.0 | 20.0 |" in out


def test_no_runs_is_a_one_line_error(tmp_path, capsys):
    assert study.main([str(tmp_path)]) == 1
    assert "no METHOD-sSEED/metrics.csv" in capsys.readouterr().err
