"""Config parsing/validation, optimizer groups, lr schedules, and CLI error handling."""

import dataclasses
import subprocess
import sys

import pytest
import torch

from rbnn.cli import main
from rbnn.config import ScheduleConfig, dump_yaml, from_dict, load_config, to_dict
from rbnn.errors import ConfigError
from rbnn.methods import get_recipe, prepare
from rbnn.models import create
from rbnn.nn.recipe import BinaryRecipe
from rbnn.train.optim import build_optimizer, lr_factor


def test_overrides_and_section_shorthand(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: resnet20\nmethod: {name: irnet, eps: 1.0e-5}\noptim: {lr: 0.05}\n")
    cfg = load_config(f, ["method=xnor", "data.subset=100", "optim.no_decay=*theta,*.scale", "epochs=2"])
    assert cfg.model == "resnet20" and cfg.method.name == "xnor" and cfg.method.recipe == {"eps": 1e-5}
    assert cfg.optim.lr == 0.05 and cfg.data.subset == 100 and cfg.optim.no_decay == ["*theta", "*.scale"]


@pytest.mark.parametrize("override,match", [
    ("bogus=1", "unknown config key 'bogus'"),
    ("optim.bogus=1", "unknown config key 'optim.bogus'"),
    ("epochs=two", "config key 'epochs': expected an integer"),
    ("optim.lr=-0.1", "config key 'optim.lr': must be > 0"),
    ("deterministic=maybe", "expected true/false"),
    ("schedule.name=exp", "schedule.name"),
])
def test_bad_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_no_decay_groups():
    torch.manual_seed(0)
    model = create("smallnet", method="rbnn")
    cfg = load_config(None, ["optim.no_decay=*theta,*.scale", "optim.weight_decay=1e-4"]).optim
    opt = build_optimizer(model, cfg)
    decay, plain = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    plain_names = sorted(names[id(p)] for p in plain["params"])
    assert plain["weight_decay"] == 0 and decay["weight_decay"] == 1e-4
    assert plain_names and all(n.endswith(("theta", ".scale")) for n in plain_names)
    assert len(decay["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_reference_warmup_then_cosine_epoch_granularity():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=5, granularity="epoch")
    f = [lr_factor(e, 0, 100, 1000, cfg) for e in range(7)]
    assert f[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # lr 0.02 .. 0.1 with base 0.1
    assert f[5] == pytest.approx(1.0) and f[6] < 1.0
    assert lr_factor(999, 0, 100, 1000, cfg) < 1e-4


def test_step_granularity_cosine_and_linear():
    cos = ScheduleConfig(name="cosine")
    assert lr_factor(0, 0, 10, 2, cos) == 1.0
    assert lr_factor(1, 0, 10, 2, cos) == pytest.approx(0.5)
    lin = ScheduleConfig(name="linear")
    assert lr_factor(1, 5, 10, 4, lin) == pytest.approx(1 - 1.5 / 4)


def test_cli_errors_are_one_line_and_exit_2(capsys):
    assert main(["train", "bogus.key=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown config key 'bogus.key'")
    assert main(["train", "optim.lr=-1"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert main(["train", "model=nonexistent", "data=synthetic", "threads=1"]) == 2
    assert "nonexistent" in capsys.readouterr().err


def test_missing_dataset_dir_message(tmp_path, capsys):
    assert main(["train", f"data.root={tmp_path / 'nope'}", f"out={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "nope") in err[0]
    assert not (tmp_path / "run").exists()


def test_summary_counts(capsys):
    assert main(["summary", "model=resnet20", "method=rbnn", "--input-size", "3", "32", "32", "--json"]) == 0
    import json
    s = json.loads(capsys.readouterr().out)
    binary = [r for r in s["layers"] if r["kind"] == "binary"]
    floats = [r["layer"] for r in s["layers"] if r["kind"] == "float"]
    assert len(binary) == 18 and floats == ["conv1", "fc"]
    # packed: 1 bit per weight (16 channels pad to one 64-bit word per tap)
    conv = next(r for r in binary if r["params"] >= 64 * 64 * 9)
    assert conv["binary_ops"] > 0 and conv["flops"] == 0


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "rbnn", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout


def test_prepare_on_model_zoo_reports_float_layers():
    m = prepare(create("resnet18", num_classes=1000, method=None), "irnet")
    assert "conv1" in m.binarization["float_layers"] and "fc" in m.binarization["float_layers"]


@pytest.mark.parametrize("path", sorted((__import__("pathlib").Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    from rbnn.ablate import load_ablation
    from rbnn.methods import METHODS
    from rbnn.models import list_models

    cfg = load_ablation(path, [])[0] if path.name.startswith("ablation") else load_config(path)
    assert cfg.model in list_models() and cfg.method.name in METHODS


def test_method_recipe_overrides_reach_the_layers():
    # "none" is a recipe value here, not null: the override must arrive as the string
    cfg = load_config(None, ["method=rbnn", "method.act_transform=none", "method.weight_scale=pow2", "method.eps=0.5"])
    assert cfg.method.recipe_overrides() == {"act_transform": "none", "weight_scale": "pow2", "eps": 0.5}
    m = create("smallnet", method="rbnn", **cfg.method.recipe_overrides())
    r = next(mod.recipe for mod in m.modules() if hasattr(mod, "recipe"))
    assert (r.act_transform, r.weight_scale, r.eps, r.rotation) == ("none", "pow2", 0.5, True)
    assert load_config(None, ["method=rbnn"]).method.recipe_overrides() == {}


def _other_value(f: dataclasses.Field):
    """A valid value of recipe field ``f`` that differs from its default (checked by BinaryRecipe itself)."""
    import rbnn.nn.recipe as recipe_module

    # the recipe module's name tuples and the component registries it validates against (name -> component)
    words = [w for v in vars(recipe_module).values() if isinstance(v, tuple | dict) for w in v if isinstance(w, str)]
    d = f.default
    if isinstance(d, bool):
        candidates = [not d]
    elif isinstance(d, int):
        candidates = [d + 1, d - 1]
    elif isinstance(d, float):
        candidates = [d + 0.25]
    else:
        candidates = [*words, "constant", None]
    for c in candidates:
        if c != d:
            try:
                BinaryRecipe(**{f.name: c})
            except ValueError:
                continue
            return c
    raise AssertionError(f"no other valid value for {f.name}")


@pytest.mark.parametrize("f", dataclasses.fields(BinaryRecipe), ids=lambda f: f.name)
def test_every_recipe_field_is_a_method_key(f):
    # every BinaryRecipe field, not only those a config class mirrors, can be set from the command line, is
    # typed as the recipe types it, reaches the recipe, and survives the run's config.yaml / checkpoint
    value = _other_value(f)
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    cfg = load_config(None, ["method=irnet", f"method.{f.name}={text}"])
    assert cfg.method.recipe_overrides() == {f.name: value}
    assert type(cfg.method.recipe[f.name]) is type(value)
    assert getattr(get_recipe("irnet", **cfg.method.recipe_overrides()), f.name) == value != f.default
    assert from_dict(to_dict(cfg)) == cfg and f"{f.name}: " in dump_yaml(cfg)
    assert load_config(None, ["method=irnet", f"method.recipe.{f.name}={text}"]) == cfg


def test_unknown_recipe_field_and_legacy_method_section():
    listed = "valid keys here: name, skip, recipe, weight_transform"
    with pytest.raises(ConfigError, match=f"unknown config key 'method.bogus' .*{listed}"):
        load_config(None, ["method.bogus=1"])
    with pytest.raises(ConfigError, match="config key 'method.rotation': expected true/false, got 'maybe'"):
        load_config(None, ["method.rotation=maybe"])
    # null is a value (real activations, W1A32), not "unset": it must reach the recipe
    cfg = load_config(None, ["method=irnet", "method.act_estimator=null"])
    assert cfg.method.recipe == {"act_estimator": None}
    assert get_recipe("irnet", **cfg.method.recipe_overrides()).act_estimator is None
    # a config.yaml written when MethodConfig mirrored some fields, null / "" meaning "the recipe's own"
    legacy = to_dict(load_config(None, ["method=rbnn", "method.eps=0.5"]))
    legacy["method"] = {"name": "rbnn", "weight_estimator": None, "act_estimator": None, "act_transform": "",
                        "weight_scale": "", "zero": None, "eps": 0.5, "t_min": None, "t_max": None,
                        "rotation_grad": None, "rotation_cycles": None, "rotation_period": None,
                        "rotation_every_steps": None, "theta_init": None, "scale_init": None, "gamma_mode": None,
                        "gamma": None, "skip": None}
    assert from_dict(legacy).method.recipe_overrides() == {"eps": 0.5}


def test_resume_sees_a_recipe_override_set_in_only_one_of_the_configs():
    from rbnn.train.engine import config_differences

    saved, now = load_config(None, ["method=irnet", "method.eps=0.5"]), load_config(None, ["method=irnet"])
    assert config_differences(saved, now) == ["method.eps"]  # stored only when set: absent now is a difference
    assert config_differences(now, saved) == ["method.eps"]
    assert config_differences(saved, saved) == []
