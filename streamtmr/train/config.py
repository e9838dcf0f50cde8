"""Training configs: YAML files validated against one dataclass per section.

A config has four sections::

    model:  which anonymizer to build (method, preset, overrides of the preset)
    data:   windows, the split the anonymizer may train on, the validation hold-out
    train:  the curriculum (stages with iterations and λ weights) and optimisation settings
    output: where runs go and how often checkpoints are kept

Every key is checked: an unknown key or a value of the wrong type raises :class:`ConfigError`
naming the file, the line and the dotted key (``configs/x.yaml:12: train.stages[1].lrr: unknown
key (did you mean 'lr'?)``). Command-line overrides (``--set train.batch_size=8``) are applied to
the raw YAML before validation and are checked the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config file or override is malformed (the message names the file and the key)."""


@dataclass
class ModelConfig:
    method: str = "tmr"
    #: Named size of the method's model (``Anonymizer.presets``); None builds from overrides only.
    preset: str | None = "tiny"
    #: Model config keys applied on top of the preset.
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    window: int = 64
    #: ``meta.json`` "splits" entry listing the subjects the anonymizer may see.
    train_split: str = "anonymizer_train"
    #: Validation holds out the rows of the training subjects whose ``val_column`` takes one of
    #: ``val_values`` (default: the column's largest value, e.g. the last repetition).
    val_column: str = "rep"
    val_values: list[int] | None = None
    #: Upper bound on validation windows (centre crops), to keep validation cheap.
    max_val_windows: int = 256
    #: Store arrays used as source and ground-truth target.
    source_array: str = "joints"
    target_array: str = "target"
    #: Style augmentation of the *source* in training steps (not validation; the target is
    #: untouched), so the model learns that these differences between people do not change
    #: its output: per window, every bone's direction gets a constant random offset of this
    #: standard deviation (unit-vector units, 0.07 ≈ 4°), its motion around the window's mean
    #: direction a random gain exp(N(0, amplitude)), its length a factor N(1, bones), and its
    #: motion a random delay of N(0, lag) frames.
    #: See :func:`streamtmr.train.augment.style_jitter`. 0 switches a part off.
    augment_posture: float = 0.0
    augment_amplitude: float = 0.0
    augment_bones: float = 0.0
    augment_lag: float = 0.0
    #: Cross-identity pair items rendered per training step for the privacy terms (ver, inv_h,
    #: inv_out, pair_mse; :mod:`streamtmr.data.pairs`): fresh SynthKinect people every batch,
    #: drawn from the endless stream ``pairs_seed``. 0: off (those λ must then be 0).
    pairs_per_batch: int = 0
    pairs_seed: int = 1
    #: Processes that render those pairs side by side (0: the training process alone, about
    #: 0.1 s for 12 pairs on one core, several times a paper-size model's step on a GPU). The
    #: pairs are the same either way.
    pair_workers: int = 0
    #: Folder of real NTU ``.skeleton`` recordings for the label-free ``dyn`` term, and how many
    #: of their windows each step uses (None: off; the λ must then be 0).
    real_dir: str | None = None
    real_per_batch: int = 8
    #: UTKinect-Action3D folder and the subjects (ids 1-10) whose windows train the real-person
    #: verification adversary ``ver_real``; the other subjects are the evaluation's
    #: (``streamtmr evaluate --utk-subjects``). ``real_people_per_batch`` triplets per step, each
    #: ``real_people_window`` frames (the evaluation's UTKinect window).
    real_utkinect: str | None = None
    real_utkinect_subjects: list[int] | None = None
    real_people_per_batch: int = 8
    real_people_window: int = 32
    #: A frozen streaming anonymizer (checkpoint path, or ``default``) that every model input
    #: passes through first (the source windows, the pair items, the real windows; after the
    #: style augmentation). The model then learns to be the *next* stage of a cascade, on what
    #: that stage publishes: ``streamtmr chain STAGE MODEL ...``. None: the raw source.
    source_stage: str | None = None


@dataclass
class StageConfig:
    #: The method's name for the stage (TMR: encoders, decoder, end_to_end).
    name: str
    iterations: int
    #: λ per loss term; None uses the method's table for this stage.
    weights: dict[str, float] | None = None
    #: Overrides ``train.lr`` for this stage.
    lr: float | None = None


@dataclass
class TrainConfig:
    stages: list[StageConfig]
    batch_size: int = 64
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    #: Learning rate within each stage: constant, or cosine decay to ``lr_min_ratio``·lr;
    #: either after ``warmup_steps`` of linear warm-up.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_min_ratio: float = 0.05
    warmup_steps: int = 0
    #: Global gradient-norm clip per optimiser step; 0 disables clipping.
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    val_every: int = 500
    ckpt_every: int = 1000
    num_workers: int = 0
    #: CPU threads for torch (0: torch's default).
    num_threads: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: DDP only: needed when a stage's trainable modules do not all receive gradients each step.
    find_unused_parameters: bool = True
    progress: bool = True
    #: Start from this checkpoint's weights (a fine-tune; its model config must match the run's).
    init_from: str | None = None
    #: Frozen action recognizer for the ``act_out`` term (``python -m streamtmr.train.teacher``).
    action_teacher: str | None = None


@dataclass
class OutputConfig:
    dir: str = "runs/tmr"
    #: Also keep ``stage<k>.safetensors`` at the end of every stage.
    keep_stage_checkpoints: bool = True


@dataclass
class Config:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    output: OutputConfig = field(default_factory=OutputConfig)
    #: Where the config came from (for messages); not a YAML key.
    source: str = field(default="<config>", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


# ---------------------------------------------------------------------------------------------
# Loading


Path_ = tuple[str | int, ...]


def dotted(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or "<root>"


class _Where:
    """Formats error locations: ``file:line: key``."""

    def __init__(self, source: str, lines: dict[Path_, int]):
        self.source, self.lines = source, lines

    def error(self, path: Path_, msg: str) -> ConfigError:
        line = None
        for k in range(len(path), -1, -1):  # nearest enclosing key with a known line
            if path[:k] in self.lines:
                line = self.lines[path[:k]]
                break
        loc = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{loc}: {dotted(path)}: {msg}")


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """YAML → (data, line of every key/item), so errors can point at lines."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML ({e})") from None
    finally:
        loader.dispose()
    lines: dict[Path_, int] = {}

    def walk(n: yaml.Node, path: Path_) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                p = (*path, str(k.value))
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                lines[(*path, i)] = v.start_mark.line + 1
                walk(v, (*path, i))

    if node is not None:
        walk(node, ())
    return data, lines


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _unknown_key(where: _Where, path: Path_, key: str, allowed: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})"
    return where.error((*path, key), f"unknown key{hint}")


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _convert(value: Any, tp: Any, path: Path_, where: _Where) -> Any:
    """Check ``value`` against the type hint ``tp`` and build dataclasses."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, path, where)
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, path, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise where.error(path, f"expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise where.error(path, f"expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, (*path, i), where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise where.error(path, f"expected a mapping, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {str(k): _convert(v, item, (*path, str(k)), where) for k, v in value.items()}
    if tp is Any:
        return value
    return _convert_scalar(value, tp, path, where)


def _convert_dataclass(value: Any, tp: Any, path: Path_, where: _Where) -> Any:
    if not isinstance(value, dict):
        raise where.error(path, f"expected a mapping, got {type(value).__name__}")
    hints = typing.get_type_hints(tp)
    fields = _fields(tp)
    for k in value:
        if k not in fields:
            raise _unknown_key(where, path, str(k), list(fields))
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(value[name], hints[name], (*path, name), where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise where.error((*path, name), "missing required key")
    return tp(**kwargs)


def _convert_union(value: Any, tp: Any, path: Path_, where: _Where) -> Any:
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise where.error(path, f"expected {_type_name(tp)}, got null")
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return _convert(value, a, path, where)
        except ConfigError as e:
            errors.append(e)
    raise errors[0] if len(errors) == 1 else where.error(
        path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


#: Scalar type → (accepts, what the message calls it).
_SCALARS: dict[type, tuple[Any, str]] = {
    bool: (lambda v: isinstance(v, bool), "true/false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _convert_scalar(value: Any, tp: Any, path: Path_, where: _Where) -> Any:
    if tp not in _SCALARS:
        raise TypeError(f"unsupported config type {tp!r}")  # a schema bug, not a user error
    accepts, name = _SCALARS[tp]
    if not accepts(value):
        got = repr(value) if tp is bool else f"{type(value).__name__} {value!r}"
        raise where.error(path, f"expected {name}, got {got}")
    return float(value) if tp is float else value


def _check_values(cfg: Config, where: _Where) -> None:
    """Range checks that types cannot express."""
    def positive(path: Path_, v: float, strict: bool = True) -> None:
        if v < 0 or (strict and v == 0):
            raise where.error(path, f"must be {'> 0' if strict else '>= 0'}, got {v!r}")

    t = cfg.train
    if not t.stages:
        raise where.error(("train", "stages"), "needs at least one stage")
    for i, s in enumerate(t.stages):
        positive(("train", "stages", i, "iterations"), s.iterations)
        if s.lr is not None:
            positive(("train", "stages", i, "lr"), s.lr)
        for k, w in (s.weights or {}).items():
            positive(("train", "stages", i, "weights", k), w, strict=False)
    for name in ("batch_size", "lr", "log_every", "val_every", "ckpt_every"):
        positive(("train", name), getattr(t, name))
    for name in ("grad_clip", "weight_decay", "num_workers", "num_threads", "warmup_steps",
                 "lr_min_ratio"):
        positive(("train", name), getattr(t, name), strict=False)
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise where.error(("train", "betas"), f"expected two numbers in [0, 1), got {t.betas}")
    positive(("data", "window"), cfg.data.window)
    positive(("data", "max_val_windows"), cfg.data.max_val_windows)
    for name in ("augment_posture", "augment_amplitude", "augment_bones", "augment_lag",
                 "pairs_per_batch", "pair_workers"):
        positive(("data", name), getattr(cfg.data, name), strict=False)
    positive(("data", "real_per_batch"), cfg.data.real_per_batch)
    positive(("data", "real_people_per_batch"), cfg.data.real_people_per_batch)
    positive(("data", "real_people_window"), cfg.data.real_people_window)
    if (cfg.data.real_utkinect is None) != (cfg.data.real_utkinect_subjects is None):
        raise where.error(("data", "real_utkinect_subjects"),
                          "real_utkinect and real_utkinect_subjects go together (a folder and "
                          "the training half of its people)")
    if cfg.data.pairs_per_batch == 1:
        raise where.error(("data", "pairs_per_batch"), "must be 0 (off) or >= 2 (the "
                          "verifier's negatives pair people of different items)")
    if cfg.data.augment_bones >= 0.25:
        raise where.error(("data", "augment_bones"),
                          f"must be < 0.25 (a bone could shrink to nothing), "
                          f"got {cfg.data.augment_bones!r}")


def from_dict(raw: Any, source: str = "<config>", lines: dict[Path_, int] | None = None,
              ) -> Config:
    """Validate a raw mapping (as loaded from YAML) into a :class:`Config`."""
    where = _Where(source, lines or {})
    cfg = _convert(raw if raw is not None else {}, Config, (), where)
    cfg.source = source
    _check_values(cfg, where)
    return cfg


_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _split_key(key: str, src: str) -> list[str | int]:
    parts: list[str | int] = []
    pos = 0
    for m in _TOKEN.finditer(key):
        gap = key[pos:m.start()]
        if gap not in ("", "."):
            raise ConfigError(f"{src}: malformed key {key!r}")
        parts.append(int(m.group(2)) if m.group(2) is not None else
                     (int(m.group(1)) if m.group(1).isdigit() else m.group(1)))
        pos = m.end()
    if not parts or key[pos:]:
        raise ConfigError(f"{src}: malformed key {key!r}")
    return parts


def _schema_at(tp: Any, key: str | int) -> Any:
    """The type of ``key`` inside ``tp`` or None when ``tp`` has no such key."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for a in typing.get_args(tp):
            if a is not type(None):
                return _schema_at(a, key)
    if dataclasses.is_dataclass(tp):
        return typing.get_type_hints(tp).get(key) if key in _fields(tp) else None
    if origin is list and isinstance(key, int):
        return typing.get_args(tp)[0]
    if origin is dict and isinstance(key, str):
        return typing.get_args(tp)[1]
    if tp is Any:
        return Any
    return None


def apply_override(raw: dict[str, Any], assignment: str, source: str = "<config>") -> None:
    """Apply one ``key.path[i].name=value`` override (value parsed as YAML) to ``raw``."""
    src = f"{source} (--set {assignment})"
    if "=" not in assignment:
        raise ConfigError(f"{src}: expected KEY=VALUE")
    key, text = assignment.split("=", 1)
    parts = _split_key(key.strip(), src)
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{src}: value is not valid YAML ({e})") from None
    where = _Where(src, {})
    tp: Any = Config
    node: Any = raw
    for depth, p in enumerate(parts):
        sub = _schema_at(tp, p)
        here = tuple(parts[:depth])
        if sub is None:
            if dataclasses.is_dataclass(tp) and isinstance(p, str):
                raise _unknown_key(where, here, p, list(_fields(tp)))
            raise where.error(tuple(parts[:depth + 1]), "no such key")
        last = depth == len(parts) - 1
        if isinstance(p, int):
            if not isinstance(node, list) or not -len(node) <= p < len(node):
                n = len(node) if isinstance(node, list) else 0
                raise where.error(tuple(parts[:depth + 1]), f"index out of range (have {n})")
        elif not isinstance(node, dict):
            raise where.error(here, "is not a mapping")
        if last:
            node[p] = value
        else:
            if isinstance(p, str) and not isinstance(node.get(p), (dict, list)):
                node[p] = {}
            node = node[p]
        tp = sub


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read, override and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror or e})") from None
    raw, lines = _parse_yaml(text, str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for o in overrides:
        apply_override(raw, o, str(path))
    return from_dict(raw, str(path), lines)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what a run records next to its checkpoints)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
