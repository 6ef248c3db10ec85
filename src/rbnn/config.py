"""Typed run configuration: dataclasses loaded from YAML, with dotted ``key=value`` overrides.

Unknown keys and values of the wrong type are errors (``ConfigError``). Assigning a plain value to a section
sets its ``name``: ``method=xnor`` is ``method.name=xnor``, ``data=cifar10`` is ``data.name=cifar10``.
A model may carry training defaults (``rbnn.models.model_defaults``, e.g. its optimizer's lr) that replace the
global ones in every section the YAML file and the overrides leave alone.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .models import model_defaults
from .nn.recipe import BinaryRecipe


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # fashion-mnist | mnist | idx | cifar10 | imagenet | synthetic
    root: str | None = None  # default: /usr/share/datasets/fashion-mnist for fashion-mnist
    subset: int = 0  # use the first N training images (0 = all)
    test_subset: int = 0  # use the first N test images (0 = all)
    augment: bool | None = None  # None: the dataset's default (crop+flip for CIFAR/ImageNet, none for 28x28)
    workers: int = -1  # loader worker processes (ImageNet folders); -1: from the CPU count, 0: none
    image_size: int = 0  # 0: the dataset's native size (ImageNet: 224)
    drop_last_test: bool = False  # the reference CIFAR loaders drop the last partial test batch
    channels: int = 0  # synthetic data only: image channels (0 = 1)
    num_classes: int = 0  # synthetic data only: classes (0 = 10)


# every BinaryRecipe field is a ``method.<field>`` key, with the recipe's own type
RECIPE_TYPES: dict[str, Any] = typing.get_type_hints(BinaryRecipe)


@dataclass
class MethodConfig:
    """A method from ``rbnn.methods`` plus overrides of any of its ``BinaryRecipe`` fields.

    ``method.<field>=value`` (or ``method: {name: ..., <field>: value}`` in YAML) sets ``recipe[<field>]``,
    coerced to the recipe field's type; a field not set keeps the method's own value. Only the set fields are
    stored, so "unset" needs no special value (``weight_estimator=null`` and ``act_transform=none`` are values).
    """

    name: str = "rbnn"
    skip: list[str] | None = None  # glob patterns of layers kept float (default: the model's float_layers)
    recipe: dict[str, Any] = field(default_factory=dict)  # the overridden BinaryRecipe fields

    def recipe_overrides(self) -> dict[str, Any]:
        return dict(self.recipe)


@dataclass
class OptimConfig:
    # sgd | adam | adamw (the paper recipes in configs/ set sgd, lr 0.1, wd 1e-4); a model's registered
    # defaults replace these when no optim key is set (the CIFAR/ImageNet networks: a higher Adam lr)
    name: str = "adam"
    lr: float = 0.002
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # parameter-name globs that get no weight decay, e.g. ["*theta", "*.scale", "*bn*", "*.bias"];
    # the reference codes decay everything (empty list).
    no_decay: list[str] = field(default_factory=list)
    # > 0: rescale the gradients so their global L2 norm is at most this, after backward and the methods'
    # gradient hooks, before the step (0: off, as the reference codes). A guard against the gradient
    # explosion of sharpening surrogates late in short schedules (docs/rbnn.md, the 16-epoch study).
    clip_grad_norm: float = 0.0


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | linear | step | constant
    warmup_epochs: float = 0.0
    granularity: str = "step"  # step: lr changes every iteration; epoch: once per epoch (reference codes)
    min_lr: float = 0.0
    milestones: list[float] = field(default_factory=list)  # for step: epochs at which lr *= gamma
    gamma: float = 0.1


@dataclass
class DistillConfig:
    teacher: str | None = None  # checkpoint of a trained rbnn model (a float network) used as teacher
    weight: float = 1.0  # loss = (1 - weight) * CE + weight * KD
    temperature: float = 1.0


@dataclass
class Config:
    model: str = "smallnet"
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # standard: the model's weight init with BatchNorm gamma = 1 (trains with the default Adam; IR-Net's code);
    # reference: the reference code's init (RBNN's ResNets: gamma = 1e-8; the paper configs set it); pytorch
    model_init: str = "standard"
    epochs: int = 4
    batch_size: int = 128
    eval_batch_size: int = 512
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads (0 = torch default)
    amp: str = "none"  # none | bf16 (autocast on CUDA)
    channels_last: bool = False
    sync_bn: bool = False
    nproc: int = 1  # >1: launch that many DDP processes on this machine
    out: str = ""  # run directory; default runs/<model>-<method>-<timestamp>
    tensorboard: bool = False
    progress: bool | None = None  # tqdm bars; None = only on a TTY
    init_from: str | None = None  # load weights from a checkpoint before training (non-strict, reported)
    checkpoint_every: int = 1  # epochs between last.pt writes
    export: bool = True  # export + verify the packed 1-bit model at the end (binary methods)
    diagnostics: bool = True  # per-layer angle/flip/alpha metrics each epoch
    # steps between the loop's host syncs (loss/NaN check, sums; under DDP the stop flag); 0: 50 on CUDA, 1 else
    sync_every: int = 0
    # steps between oscillation samples (osc_seq, gamma_mean); 0: 20 on CUDA, 1 (every step, exact) else
    diagnostics_every: int = 0


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; strings from the command line are YAML-parsed."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("null", "none", "~") and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {' or '.join(_type_name(a) for a in args)}, "
                          f"got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value] if args else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    return value


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _apply(obj: Any, key_path: list[str], value: Any, full_key: str) -> None:
    cls = type(obj)
    hints = _hints(cls)
    head = key_path[0]
    if isinstance(obj, MethodConfig) and (head in RECIPE_TYPES or head == "recipe"):
        _apply_recipe(obj, key_path, value, full_key)
        return
    if head not in hints:
        valid = [*hints, *(RECIPE_TYPES if isinstance(obj, MethodConfig) else ())]
        raise ConfigError(f"unknown config key '{full_key}' (valid keys here: {', '.join(valid)})")
    current = getattr(obj, head)
    if dataclasses.is_dataclass(current):
        if len(key_path) == 1:
            if isinstance(value, dict):
                for k, v in value.items():
                    _apply(current, [str(k)], v, f"{full_key}.{k}")
            else:
                _apply(current, ["name"], value, f"{full_key}.name")
            return
        _apply(current, key_path[1:], value, full_key)
        return
    if len(key_path) > 1:
        raise ConfigError(f"unknown config key '{full_key}': '{head}' is not a section")
    setattr(obj, head, _coerce(value, hints[head], full_key))


def _apply_recipe(method: MethodConfig, key_path: list[str], value: Any, full_key: str) -> None:
    """``method.<field>`` and ``method.recipe.<field>``: one BinaryRecipe field, or ``method.recipe`` as a
    mapping of them."""
    if key_path[0] == "recipe":
        if len(key_path) == 1:
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full_key}': expected a mapping of recipe fields, got {value!r}")
            for k, v in value.items():
                _apply_recipe(method, [str(k)], v, f"{full_key}.{k}")
            return
        key_path = key_path[1:]
    head = key_path[0]
    if head not in RECIPE_TYPES:
        raise ConfigError(f"unknown config key '{full_key}' (recipe fields: {', '.join(RECIPE_TYPES)})")
    if len(key_path) > 1:
        raise ConfigError(f"unknown config key '{full_key}': '{head}' is not a section")
    method.recipe[head] = _coerce(value, RECIPE_TYPES[head], full_key)


def validate(cfg: Config) -> Config:
    """Range checks that types alone cannot express."""
    def bad(key: str, msg: str) -> None:
        raise ConfigError(f"config key '{key}': {msg}")

    if cfg.epochs < 1:
        bad("epochs", f"must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        bad("batch_size", f"must be >= 1, got {cfg.batch_size}")
    if cfg.eval_batch_size < 1:
        bad("eval_batch_size", f"must be >= 1, got {cfg.eval_batch_size}")
    if not cfg.optim.lr > 0:
        bad("optim.lr", f"must be > 0, got {cfg.optim.lr}")
    if cfg.optim.weight_decay < 0:
        bad("optim.weight_decay", f"must be >= 0, got {cfg.optim.weight_decay}")
    if not cfg.optim.clip_grad_norm >= 0 or cfg.optim.clip_grad_norm == float("inf"):
        bad("optim.clip_grad_norm", f"must be a finite number >= 0 (0: off), got {cfg.optim.clip_grad_norm}")
    if cfg.optim.name not in ("sgd", "adam", "adamw"):
        bad("optim.name", f"expected sgd, adam or adamw, got {cfg.optim.name!r}")
    if cfg.schedule.name not in ("cosine", "linear", "step", "constant"):
        bad("schedule.name", f"expected cosine, linear, step or constant, got {cfg.schedule.name!r}")
    if cfg.schedule.granularity not in ("step", "epoch"):
        bad("schedule.granularity", f"expected step or epoch, got {cfg.schedule.granularity!r}")
    if cfg.schedule.warmup_epochs < 0 or cfg.schedule.warmup_epochs >= cfg.epochs > 1:
        bad("schedule.warmup_epochs", f"must be in [0, epochs), got {cfg.schedule.warmup_epochs}")
    if cfg.data.subset < 0 or cfg.data.test_subset < 0:
        bad("data.subset", "must be >= 0")
    if cfg.amp not in ("none", "bf16"):
        bad("amp", f"expected none or bf16, got {cfg.amp!r}")
    if cfg.model_init not in ("reference", "standard", "pytorch"):
        bad("model_init", f"expected reference, standard or pytorch, got {cfg.model_init!r}")
    if cfg.nproc < 1:
        bad("nproc", f"must be >= 1, got {cfg.nproc}")
    _validate_run_keys(cfg, bad)
    for key in ("sync_every", "diagnostics_every"):
        if getattr(cfg, key) < 0:
            bad(key, f"must be >= 0 (0: the device's default), got {getattr(cfg, key)}")
    if cfg.data.workers < -1:
        bad("data.workers", f"must be >= -1 (-1: from the CPU count), got {cfg.data.workers}")
    if not 0 <= cfg.distill.weight <= 1:
        bad("distill.weight", f"must be in [0, 1], got {cfg.distill.weight}")
    if cfg.distill.temperature <= 0:
        bad("distill.temperature", f"must be > 0, got {cfg.distill.temperature}")
    return cfg


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _validate_run_keys(cfg: Config, bad) -> None:
    """Values torch itself would reject later, with a traceback, after the run directory exists."""
    if not _DEVICE.fullmatch(cfg.device):
        bad("device", f"expected auto, cpu, cuda, cuda:N or mps, got {cfg.device!r}")
    if not 0 <= cfg.seed < 2**63:
        bad("seed", f"must be in [0, 2**63), got {cfg.seed}")
    if cfg.checkpoint_every < 1:
        bad("checkpoint_every", f"must be >= 1 (epochs between checkpoints), got {cfg.checkpoint_every}")
    if cfg.threads < 0:
        bad("threads", f"must be >= 0 (0 = torch's default), got {cfg.threads}")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        bad("optim.betas", f"expected two numbers in [0, 1), got {cfg.optim.betas}")
    if cfg.optim.momentum < 0:
        bad("optim.momentum", f"must be >= 0, got {cfg.optim.momentum}")
    if cfg.optim.nesterov and (cfg.optim.name != "sgd" or cfg.optim.momentum <= 0):
        bad("optim.nesterov", "needs optim.name=sgd with optim.momentum > 0")
    if cfg.schedule.min_lr < 0:
        bad("schedule.min_lr", f"must be >= 0, got {cfg.schedule.min_lr}")
    if cfg.schedule.gamma <= 0:
        bad("schedule.gamma", f"must be > 0, got {cfg.schedule.gamma}")
    if cfg.data.image_size < 0:
        bad("data.image_size", f"must be >= 0 (0 = the dataset's native size), got {cfg.data.image_size}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if any), then ``key=value`` overrides, then the model's defaults in the
    sections neither set; validated."""
    cfg = Config()
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            data = yaml.safe_load(p.read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {p} is not UTF-8 text (byte {e.start}: {e.reason})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p}: expected a mapping at the top level")
        for k, v in data.items():
            _apply(cfg, [str(k)], v, str(k))
    apply_overrides(cfg, overrides)
    apply_model_defaults(cfg, [*map(str, data), *(o.split("=", 1)[0].strip() for o in overrides)])
    return validate(cfg)


def apply_model_defaults(cfg: Config, user_keys: Iterable[str]) -> Config:
    """Set ``cfg.model``'s registered training defaults in every section (``optim``, ...) of which the user
    set no key (``user_keys``: the dotted keys from the YAML file and the overrides). Why: the global defaults
    suit the default job's small net; a deeper binary ResNet needs a larger Adam step to learn in a short
    run, and ``rbnn train model=X method=Y`` must learn with nothing else set."""
    user = {k.split(".")[0] for k in user_keys}
    for key, value in model_defaults(cfg.model).items():
        if key.split(".")[0] not in user:
            _apply(cfg, key.split("."), value, key)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply dotted ``key=value`` strings to ``cfg`` in place (values are type-checked, not validated)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        _apply(cfg, key.strip().split("."), value, key.strip())
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain data (for YAML and checkpoints); the method's recipe overrides sit beside its name, as a user
    writes them."""
    data = dataclasses.asdict(cfg)
    method = data["method"]
    method.update(method.pop("recipe"))
    return data


# configs written before every recipe field was a key stored each of these, null or "" meaning "the recipe's own"
_LEGACY_METHOD_KEYS = {"weight_estimator", "act_estimator", "act_transform", "weight_scale", "zero", "eps", "t_min",
                       "t_max", "rotation_grad", "rotation_cycles", "rotation_period", "rotation_every_steps",
                       "theta_init", "scale_init", "gamma_mode", "gamma"}


def from_dict(data: dict[str, Any]) -> Config:
    """A config from :func:`to_dict`'s data (a run's config.yaml or a checkpoint's), validated."""
    method = data.get("method")
    if isinstance(method, dict) and _LEGACY_METHOD_KEYS <= set(method):
        data = {**data, "method": {k: v for k, v in method.items()
                                   if k not in _LEGACY_METHOD_KEYS or v not in (None, "")}}
    cfg = Config()
    for k, v in data.items():
        _apply(cfg, [k], v, k)
    return validate(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
