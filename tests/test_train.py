"""Training engine: exact resume, determinism, accuracy above chance on real data, run directory contents."""

import csv
import json

import pytest
import torch

from rbnn.config import load_config
from rbnn.errors import RbnnError
from rbnn.train import load_run_model, train

SYN = ["threads=1", "data=synthetic", "data.subset=256", "data.test_subset=128", "batch_size=64", "export=false"]


def _cfg(tmp_path, name, *extra):
    return load_config(None, [*SYN, f"out={tmp_path / name}", *extra])


@pytest.mark.parametrize("method", ["rbnn", "irnet"])
def test_resume_after_epoch_1_equals_uninterrupted(tmp_path, method):
    common = ["model=smallnet", f"method={method}", "seed=3"]
    full = _cfg(tmp_path, "full", *common, "epochs=2")
    train(full)
    part = _cfg(tmp_path, "part", *common, "epochs=2")
    # run epoch 1 only, then resume to 2 (the config says 2 epochs so the lr/t schedules are identical)
    train(_cfg(tmp_path, "part", *common, "epochs=2", "checkpoint_every=1"), stop_after_epochs=1)
    train(part, resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a = list(csv.DictReader(open(tmp_path / "full" / "metrics.csv")))
    rows_b = list(csv.DictReader(open(tmp_path / "part" / "metrics.csv")))
    drop = {"epoch_seconds", "train_img_per_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows_a] == \
           [{k: v for k, v in r.items() if k not in drop} for r in rows_b]


def test_same_seed_same_metrics(tmp_path):
    for name in ("a", "b"):
        train(_cfg(tmp_path, name, "model=smallnet", "method=xnor", "epochs=1", "seed=7"))
    drop = {"epoch_seconds", "train_img_per_s"}
    ra = [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(open(tmp_path / "a/metrics.csv"))]
    rb = [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(open(tmp_path / "b/metrics.csv"))]
    assert ra == rb


def test_run_directory_contents_and_summary(tmp_path):
    s = train(_cfg(tmp_path, "run", "model=smallnet", "method=rbnn", "epochs=1"))
    run = tmp_path / "run"
    for f in ("config.yaml", "metrics.csv", "last.pt", "best.pt", "summary.json"):
        assert (run / f).is_file(), f
    summary = json.loads((run / "summary.json").read_text())
    for key in ("model", "method", "epochs", "test_acc", "best_test_acc", "train_seconds"):
        assert key in summary
    assert summary == json.loads(json.dumps(s, default=str))
    row = next(csv.DictReader(open(run / "metrics.csv")))
    for col in ("lr", "t", "k", "alpha", "cos_mixed", "flip_init", "conv2/alpha", "conv2/orth_err",
                "conv2/flip_random_rotation"):
        assert col in row, col
    assert float(row["conv2/orth_err"]) < 1e-5
    model, cfg, state = load_run_model(run)
    assert cfg.method.name == "rbnn" and state["epoch"] == 1


def test_existing_run_dir_is_refused_without_flags(tmp_path):
    train(_cfg(tmp_path, "run", "model=smallnet", "method=bnn", "epochs=1"))
    with pytest.raises(RbnnError, match="already exists"):
        train(_cfg(tmp_path, "run", "model=smallnet", "method=bnn", "epochs=1"))
    train(_cfg(tmp_path, "run", "model=smallnet", "method=bnn", "epochs=1"), overwrite=True)


def test_rotation_changes_every_epoch_and_eval_does_not_rotate(tmp_path):
    train(_cfg(tmp_path, "r", "model=smallnet", "method=rbnn", "epochs=2"))
    rows = list(csv.DictReader(open(tmp_path / "r" / "metrics.csv")))
    assert len(rows) == 2 and float(rows[1]["t"]) > float(rows[0]["t"])
    model, _, _ = load_run_model(tmp_path / "r")
    R1 = model.conv2.R1.clone()
    model.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        y1, y2 = model(x), model(x)
    assert torch.equal(y1, y2) and torch.equal(model.conv2.R1, R1)


def test_fashion_mnist_subset_well_above_chance(tmp_path, fashion_root):
    s = train(load_config(None, ["model=smallnet", "method=xnor", "data.subset=3000", "data.test_subset=1000",
                                 "epochs=1", "export=false", f"out={tmp_path / 'f'}"]))
    assert s["test_acc"] > 0.6  # chance is 0.1


def test_rotation_every_steps_and_period(tmp_path):
    from rbnn.models import create
    from rbnn.train.callbacks import RotationUpdate

    torch.manual_seed(0)
    model = create("smallnet", method="rbnn", rotation_every_steps=2, rotation_period=2)
    cb = RotationUpdate(model)
    R = model.conv2.R1.clone()
    cb.on_epoch_start(1, 4)  # epoch 1 is not a multiple of the period
    assert torch.equal(model.conv2.R1, R)
    cb.on_step_end(1, 0)
    assert torch.equal(model.conv2.R1, R)
    with torch.no_grad():
        model.conv2.weight.add_(torch.randn_like(model.conv2.weight))
    cb.on_step_end(1, 1)  # second step: update
    assert not torch.equal(model.conv2.R1, R)
    assert cb.state_dict() == {"steps": 2}


def test_clip_grad_norm_bounds_the_step(tmp_path):
    """One SGD step (no momentum, no decay) with lr 1 and lr 2 from the same start: the two results differ by
    exactly the clipped gradient, whose global norm must be optim.clip_grad_norm (the raw one is far larger)."""
    common = ["model=smallnet", "method=xnor", "seed=5", "epochs=1", "data.subset=64", "optim.name=sgd",
              "optim.momentum=0", "optim.weight_decay=0", "schedule.name=constant", "optim.clip_grad_norm=0.001"]
    train(_cfg(tmp_path, "lr1", *common, "optim.lr=1"))
    train(_cfg(tmp_path, "lr2", *common, "optim.lr=2"))
    a, _, _ = load_run_model(tmp_path / "lr1" / "last.pt")
    b, _, _ = load_run_model(tmp_path / "lr2" / "last.pt")
    pb = dict(b.named_parameters())
    diff = torch.sqrt(sum(((p.detach().double() - pb[n].detach().double()) ** 2).sum()
                          for n, p in a.named_parameters()))
    assert diff.item() == pytest.approx(1e-3, rel=1e-4)


def test_clip_grad_norm_must_be_finite_and_non_negative(tmp_path):
    for bad in ("-1", "inf", "nan"):
        with pytest.raises(RbnnError, match="optim.clip_grad_norm"):
            _cfg(tmp_path, "x", f"optim.clip_grad_norm={bad}")
