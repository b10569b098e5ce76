"""The ``tune:`` section: search space, strategy, objective, pruning, storage (plain pydantic; no torch, no optuna).

A search-space entry is keyed by a dotted path: ``train.<field>`` (any classifier-training field, e.g.
``train.lr``, ``train.model.dropout``, ``train.betas.0`` for Adam's β1) or a synthetic-data knob:
``synthetic.set`` (categorical: which synthetic set, ``main`` or a name in ``synthetic_sets``) and
``synthetic.per_class`` (int: generated images kept per class). The batch composition and the synthetic share /
RSP probability are training fields (``train.mixing``, ``train.synthetic_share``). The share of each class's
synthetic images an arm uses is searched per shot group or per class: ``train.synthetic_ratio.<group or class>``
entries, or ``tune.synthetic_ratio`` ({per: group | class, and the range or choices}), which adds one such entry
per shot group present in the training split or per class when the run's data is known
(:meth:`TuneConfig.with_ratio_space`).

The default space is Table 1 of the DeepFashion study (batch size, learning rate, weight decay, label
smoothing, dropout, Adam β1 and β2), in the order its one-at-a-time experiments 1–7 tuned them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synthaug.errors import SettingError
from synthaug.train.config import ModelConfig, TrainConfig

SYNTHETIC_KNOBS = {"synthetic.set", "synthetic.per_class"}
RATIO = "train.synthetic_ratio."  # + a class name or shot group: that key's share of synthetic images
MAIN_SET = "main"  # the experiment's own generated set (its generator and sampling settings as configured)
# set by the tuner itself: per trial from `epochs`, for the retrained arm from `retrain_epochs`
NOT_SEARCHABLE = {
    "train.epochs": "the epochs are tune.epochs per trial and tune.retrain_epochs for the retrain",
    "train.translation_labels": "it is a section ({mode, gamma}) of the training target of translated images; set it "
                                "in the arm's train section (the translations themselves are made by the generator)",
    "train.image_cache_mb": "it is a performance setting that changes no result",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ParamSpec(_Strict):
    """One searched parameter: ``float`` / ``int`` in [low, high] (``log``: sampled on a log scale), or
    ``categorical`` over ``choices``."""

    type: Literal["float", "int", "categorical"] = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False  # sample log-uniformly (needs low > 0)
    step: float | None = Field(None, gt=0)  # float/int: a grid step (not with log)
    choices: list[Any] | None = None  # categorical: None, bool, int, float or str values

    @model_validator(mode="after")
    def _range(self):
        if self.type == "categorical":
            if not self.choices:
                raise SettingError("type categorical needs a non-empty `choices` list")
            if self.low is not None or self.high is not None or self.log:
                raise SettingError("type categorical takes `choices`, not low/high/log")
            bad = [c for c in self.choices if c is not None and not isinstance(c, (bool, int, float, str))]
            if bad:
                raise SettingError(f"categorical choices must be None, bool, int, float or str, got {bad}")
            return self
        if self.choices is not None:
            raise SettingError(f"type {self.type} takes low/high, not `choices` (use type: categorical)")
        if self.low is None or self.high is None:
            raise SettingError(f"type {self.type} needs both low and high, got low={self.low}, high={self.high}")
        if not self.low < self.high:
            raise SettingError(f"low ({self.low}) must be below high ({self.high}); swap them")
        if self.log and self.low <= 0:
            raise SettingError(f"log: true needs low > 0, got low={self.low}; set log: false or a positive low")
        if self.log and self.step is not None:
            raise SettingError("step and log: true cannot be combined (Optuna samples either a grid or a log scale)")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise SettingError(f"type int needs whole-number bounds, got low={self.low}, high={self.high}")
        return self

    def values_to_check(self) -> list[Any]:
        """The values whose legality bounds the whole range: the end points, or every choice."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


def table1_space() -> dict[str, ParamSpec]:
    """The DeepFashion study's Table 1, in the order of its sequential experiments (1: learning rate, 2: weight
    decay, 3: label smoothing, 6: dropout, 7: batch size; then Adam's betas). Log scale for the three ranges
    that span two decades; dropout is the head's (before each head layer)."""
    return {
        "train.lr": ParamSpec(type="float", low=1e-4, high=1e-2, log=True),
        "train.weight_decay": ParamSpec(type="float", low=1e-4, high=1e-2, log=True),
        "train.label_smoothing": ParamSpec(type="float", low=1e-4, high=1e-2, log=True),
        "train.model.dropout": ParamSpec(type="float", low=0.15, high=0.6),
        "train.batch_size": ParamSpec(type="int", low=64, high=512),
        "train.betas.0": ParamSpec(type="float", low=0.87, high=0.93),
        "train.betas.1": ParamSpec(type="float", low=0.99, high=0.99999999),
    }


def train_overrides(path: str, value: Any, base: TrainConfig | None = None) -> dict[str, Any]:
    """The nested TrainConfig fields that put ``value`` at ``path`` (``train.lr``, ``train.model.dropout``,
    ``train.betas.1``), on top of ``base`` (for the other beta)."""
    parts = path.split(".")[1:]
    base = base or TrainConfig()
    if path.startswith(RATIO):
        return {"synthetic_ratio": {**(base.synthetic_ratio or {}), path[len(RATIO):]: value}}
    if parts[0] == "betas":
        betas = list(base.betas)
        betas[int(parts[1])] = value
        return {"betas": tuple(betas)}
    if parts[0] == "model":
        return {"model": {parts[1]: value}}
    return {parts[0]: value}


def searchable_train_paths() -> list[str]:
    """Every ``train.*`` path a search space may name."""
    top = [f"train.{f}" for f in TrainConfig.model_fields if f not in ("model", "betas", "synthetic_ratio")]
    model = [f"train.model.{f}" for f in ModelConfig.model_fields]
    return sorted(p for p in top + model if p not in NOT_SEARCHABLE) + ["train.betas.0", "train.betas.1"]


def check_train_path(path: str, spec: ParamSpec) -> None:
    """Raises SettingError unless ``path`` names a TrainConfig field that ``spec``'s type and range fit."""
    where = f"tune.space.{path}"
    if path.startswith(RATIO):
        check_ratio_values(where, spec)
        return
    if path in NOT_SEARCHABLE:
        raise SettingError(f"{where} cannot be searched: {NOT_SEARCHABLE[path]}")
    if path not in searchable_train_paths():
        raise SettingError(f"{where}: no such training field. Searchable: {', '.join(searchable_train_paths())}, "
                           f"{RATIO}<shot group or class>, {', '.join(sorted(SYNTHETIC_KNOBS))}")
    parts = path.split(".")
    if parts[1] == "betas":
        for v in spec.values_to_check():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1:
                raise SettingError(f"{where}: Adam's betas must lie in [0, 1), got {v!r}")
        return
    current = getattr(TrainConfig().model, parts[2]) if parts[1] == "model" else getattr(TrainConfig(), parts[1])
    kind = type(current)
    if spec.type == "float" and kind is int:
        raise SettingError(f"{where} is an integer field; use type: int")
    if spec.type in ("float", "int") and kind not in (int, float) and current is not None:
        raise SettingError(f"{where} holds {kind.__name__} values; use type: categorical with `choices`")
    for v in spec.values_to_check():
        try:
            TrainConfig(**train_overrides(path, v))
        except ValidationError as e:
            own = [err for err in e.errors() if ".".join(str(p) for p in err["loc"]) == ".".join(parts[1:])]
            if own:
                raise SettingError(f"{where}: value {v!r} is not allowed: {own[0]['msg']}") from None
        except SettingError:
            pass  # a rule across fields (e.g. a mixing that needs another setting): checked per trial


def check_ratio_values(where: str, spec: ParamSpec) -> None:
    """Raises SettingError unless every value ``spec`` may suggest is a share in [0, 1]."""
    bad = [v for v in spec.values_to_check() if not isinstance(v, (int, float)) or isinstance(v, bool)
           or not 0 <= v <= 1]
    if bad:
        raise SettingError(f"{where}: a share of a class's synthetic images lies in [0, 1] (0: none, 1: all), "
                           f"got {bad}")


class RatioSearch(ParamSpec):
    """``tune.synthetic_ratio``: search ``train.synthetic_ratio`` with one parameter per shot group present in the
    training split (``per: group``: many, medium, few) or per class (``per: class``), each over this range or
    these choices, e.g. ``{per: group, type: categorical, choices: [0, 0.25, 0.5, 1]}`` or
    ``{per: class, low: 0, high: 1}``."""

    per: Literal["group", "class"] = "group"


class TuneConfig(_Strict):
    """Optuna around one arm's training (defaults: the DeepFashion study's joint search)."""

    arm: str | None = None  # the arm to tune (its train section and synthetic set); None: the first arm
    tuned_arm: str | None = None  # name of the retrained arm's folder in train/; None: "tuned-<arm>"
    strategy: Literal["joint", "sequential"] = "joint"  # all parameters at once, or one at a time
    space: dict[str, ParamSpec] = Field(default_factory=table1_space)
    order: list[str] | None = None  # sequential: the order of the parameters (None: the order of `space`)
    n_trials: int = Field(15, ge=1)  # joint: trials in all; sequential: trials per parameter (the study: 5)
    epochs: int = Field(25, ge=1)  # training epochs per trial
    objective: Literal["mean-val-loss", "best-val-accuracy"] = "mean-val-loss"  # direction follows
    last_k: int = Field(5, ge=1)  # mean-val-loss: mean over the last k epochs' validation losses
    seed: int = 0  # TPE sampler seed (each trial's sampler is seeded from it and the trial's position)
    startup_trials: int = Field(10, ge=0)  # TPE: random trials before the model kicks in (Optuna's default)
    pruner: Literal["median", "hyperband", "none"] = "median"  # on the per-epoch validation metric
    pruner_startup_trials: int = Field(5, ge=0)  # median: trials that finish before any is pruned
    pruner_warmup_epochs: int = Field(5, ge=0)  # median: epochs of each trial before it may be pruned
    storage: str = "sqlite"  # "sqlite" (tune/study.db in the run folder), "memory", or any URL: postgresql://...
    study: str | None = None  # the study name; None: the experiment name
    retrain: bool = True  # after the search, retrain the best parameters and evaluate on test
    retrain_epochs: int | None = Field(None, ge=1)  # None: the tuned arm's own train.epochs
    heartbeat_interval: int = Field(60, ge=1)  # seconds; a RUNNING trial silent for grace_period becomes FAIL
    grace_period: int | None = Field(None, ge=1)  # None: 2 × heartbeat_interval
    max_retry: int = Field(1, ge=0)  # a FAIL from a dead worker is retried (same parameters) this many times
    poll_seconds: float = Field(5.0, gt=0)  # a worker with nothing to claim waits this long before looking again
    threads: int | None = Field(None, ge=1)  # torch threads per worker; None: cores / local workers
    synthetic_sets: dict[str, dict[str, Any]] = Field(default_factory=dict)  # name: generator sampling params
    # search train.synthetic_ratio per shot group or per class (added to `space` once the data is known, see
    # with_ratio_space; without a `space` given, the ratio alone is searched); None: only the
    # train.synthetic_ratio.<key> entries `space` names, if any
    synthetic_ratio: RatioSearch | None = None
    plots: bool = True  # history, importances, parallel coordinates as PNG in the run folder's tune/

    @field_validator("space", mode="before")
    @classmethod
    def _dotted(cls, space: Any) -> Any:
        """Nested keys are joined with dots, so ``--set tune.space.train.lr.high=0.1`` (which nests) edits the
        entry ``train.lr``."""
        if not isinstance(space, dict):
            return space
        out: dict[str, Any] = {}
        for key, value in space.items():
            if isinstance(value, ParamSpec):
                value = value.model_dump(exclude_unset=True)
            if isinstance(value, dict) and value and not set(value) & set(ParamSpec.model_fields):
                for sub, spec in cls._dotted(value).items():
                    out.setdefault(f"{key}.{sub}", {}).update(spec)
            elif isinstance(value, dict):
                out.setdefault(key, {}).update(value)
            else:
                out[key] = value
        return out

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        if not space:
            raise SettingError("tune.space is empty; give at least one parameter (or leave it out for Table 1)")
        for path, spec in space.items():
            if path.startswith("train."):
                check_train_path(path, spec)
            elif path == "synthetic.set" and spec.type != "categorical":
                raise SettingError("tune.space.synthetic.set is categorical: list the set names in `choices`")
            elif path == "synthetic.per_class":
                if spec.type not in ("int", "categorical"):
                    raise SettingError("tune.space.synthetic.per_class is a count: use type int (or categorical)")
                bad = [v for v in spec.values_to_check() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
                if bad:
                    raise SettingError(f"tune.space.synthetic.per_class: counts must be whole numbers >= 0, got {bad}")
            elif path not in SYNTHETIC_KNOBS:
                raise SettingError(f"tune.space.{path}: unknown parameter; use train.<field> (e.g. train.lr, "
                                   f"train.model.dropout, train.betas.0) or one of {sorted(SYNTHETIC_KNOBS)}")
        return space

    @field_validator("storage")
    @classmethod
    def _storage(cls, storage: str) -> str:
        if storage not in ("sqlite", "memory") and "://" not in storage:
            raise SettingError(f"tune.storage {storage!r}: use 'sqlite', 'memory' or a database URL such as "
                               "postgresql://user@host/db or sqlite:///path/study.db")
        return storage

    @model_validator(mode="after")
    def _valid(self):
        if "synthetic.set" in self.space:
            known = {MAIN_SET, *self.synthetic_sets}
            unknown = [c for c in self.space["synthetic.set"].choices if c not in known]
            if unknown:
                raise SettingError(f"tune.space.synthetic.set: unknown set(s) {unknown}; sets: {sorted(known)} "
                                   "(define more under tune.synthetic_sets)")
        if MAIN_SET in self.synthetic_sets:
            raise SettingError(f"tune.synthetic_sets: {MAIN_SET!r} is the experiment's own set; choose another name")
        if self.order is not None:
            if self.strategy != "sequential":
                raise SettingError("tune.order applies to strategy sequential only; remove it or set strategy: "
                                   "sequential")
            if sorted(self.order) != sorted(self.space):
                raise SettingError(f"tune.order must list each parameter of tune.space once: got {self.order}, "
                                   f"space has {list(self.space)}")
        if self.synthetic_ratio is not None:
            check_ratio_values("tune.synthetic_ratio", self.synthetic_ratio)
            named = [p for p in self.space if p.startswith(RATIO)]
            if named:
                raise SettingError(f"tune.synthetic_ratio searches train.synthetic_ratio per "
                                   f"{self.synthetic_ratio.per}, and tune.space names {named} too; keep one of the "
                                   "two (tune.space entries for chosen keys only, tune.synthetic_ratio for all)")
        if self.objective == "mean-val-loss" and self.last_k > self.epochs:
            raise SettingError(f"tune.last_k ({self.last_k}) exceeds tune.epochs ({self.epochs}); the objective "
                               "averages the last k epochs' validation losses: lower last_k or raise epochs")
        return self

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return "minimize" if self.objective == "mean-val-loss" else "maximize"

    def with_ratio_space(self, keys: list[str]) -> "TuneConfig":
        """This config with ``tune.synthetic_ratio`` turned into one ``train.synthetic_ratio.<key>`` entry of
        ``space`` per key (the shot groups or classes of the run's data), after the ``space`` given (none when
        ``tune.space`` is not given: the ratio alone is searched, not Table 1) and appended to ``order`` for the
        sequential strategy; unchanged without ``tune.synthetic_ratio``."""
        if self.synthetic_ratio is None:
            return self
        spec = ParamSpec(**self.synthetic_ratio.model_dump(exclude={"per"}))
        added = {f"{RATIO}{k}": spec for k in keys}
        space = {**(self.space if "space" in self.model_fields_set else {}), **added}
        order = None if self.order is None else [*self.order, *added]
        return self.model_copy(update={"space": space, "order": order, "synthetic_ratio": None})

    def steps(self) -> list[list[str]]:
        """The parameter groups searched one after another: one group (joint) or one per parameter."""
        if self.strategy == "joint":
            return [list(self.space)]
        return [[p] for p in (self.order or list(self.space))]
