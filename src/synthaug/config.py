"""Experiment configuration: YAML → pydantic models, validated once, with errors that name the field.

``load_config(path, overrides=["train.epochs=3", "arms.0.train.lr=0.01"])`` applies ``--set`` overrides
(values parsed as YAML) before validation.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synthaug.config_hints import unknown_key_hint
from synthaug.data.sources import SOURCES, read_text, source_options
from synthaug.generators.configs import generator_config
from synthaug.registry import registered
from synthaug.train.config import TrainConfig
from synthaug.evaluate.config import EvaluationConfig
from synthaug.filters.config import AnyFilterConfig, check_filters
from synthaug.tuning.config import TuneConfig
from synthaug.errors import ConfigError, DataError, SettingError  # noqa: F401  (ConfigError re-exported)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LongTailConfig(_Strict):
    imbalance_ratio: float = Field(100.0, ge=1)  # ρ = n_max / n_min
    class_order: str | list[str] | None = None  # None/"natural", "reverse", "random", or names head → tail
    n_max: int | None = Field(None, ge=1)  # head-class count; None = the smallest class's size
    # "rounded": n_c = round(n_max · ρ^(−c/(C−1))), seeded by the experiment seed (the default, for any data);
    # "cao2019": LDAM-DRW's IMBALANCECIFAR exactly (floored counts, NumPy RandomState(0), index order), the
    # subset independent of the experiment seed: what published CIFAR-10/100-LT numbers use
    profile: Literal["rounded", "cao2019"] = "rounded"


class ShotConfig(_Strict):
    many: int = 100  # many-shot: more than this many training images
    few: int = 20  # few-shot: fewer than this many


class FewShotConfig(_Strict):
    shots: int = Field(ge=1)  # k training images kept per class (seed 002's 1/2/4/8/16-shot protocol)
    draw: int = Field(0, ge=0)  # which seeded draw of the k images (one draw per repetition)


class DataConfig(_Strict):
    # mnist5k, digits, imagefolder, manifest, deepfashion-attributes, cifar10, cifar100, image-list,
    # inaturalist, hf-dataset (`synthaug list sources`)
    source: registered(SOURCES) = "mnist5k"
    # imagefolder: root/<class>/<image> (or root/{train,val,test}/<class>/...); cifar10/100: the folder holding
    # the official archive or its extracted folder; image-list / inaturalist: what list paths are relative to;
    # hf-dataset: a save_to_disk folder or parquet/arrow files
    root: str | None = None
    manifest: str | None = None  # manifest: CSV/TSV/JSONL file; relative image paths resolve against its folder
    image_column: str = "image"
    label_columns: list[str] = Field(default_factory=lambda: ["label"])
    # declared classes (else inferred, sorted); image-list / inaturalist: a subset to keep, by name or index
    classes: dict[str, list[str]] | list[str | int] | None = None
    classes_file: str | None = None  # deepfashion-attributes: a class-names file (else found under root)
    split_column: str = "split"
    caption_column: str | None = None  # manifest: a column with one caption per image (e.g. for mvc)
    label: Literal["fine", "coarse"] | None = None  # cifar100: the 100 fine classes (default) or 20 superclasses
    # image-list (ImageNet-LT, Places-LT: "relative/path label" lines): list files, relative to data.root unless
    # absolute; val_list is optional (without it validation is carved from train)
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    class_names: str | None = None  # image-list: one name per line in index order, or "index name" lines
    # inaturalist: the COCO-style annotation files (train2018.json, val2018.json, ...); image paths in them
    # are relative to data.root
    train_json: str | None = None
    val_json: str | None = None
    test_json: str | None = None
    mode: Literal["L", "RGB"] = "RGB"  # user data: PIL mode images are converted to
    on_bad_image: Literal["error", "skip"] = "error"
    test_per_class: int | None = Field(None, ge=1)  # held-out test images per class (None: the source's default)
    val_per_class: int | None = Field(None, ge=0)
    split_seed: int = 0  # fixed split seed, independent of the experiment seed
    longtail: LongTailConfig | None = None  # subsample the training split to a long-tailed profile
    fewshot: FewShotConfig | None = None  # keep k training images per class (after any long tail)
    shots: ShotConfig = Field(default_factory=ShotConfig)  # reporting only: changing it retrains nothing

    _EVERY_SOURCE: ClassVar[frozenset[str]] = frozenset({"source", "longtail", "fewshot", "shots"})
    _NEEDS_ROOT: ClassVar[frozenset[str]] = frozenset({"imagefolder", "deepfashion-attributes", "cifar10", "cifar100",
                                                       "image-list", "inaturalist", "hf-dataset"})
    # fields added after run folders were recorded, with the value that behaves as before they existed: at that
    # value a field is left out of the data stage's fingerprint, so earlier data stages still match
    _ADDED: ClassVar[dict[str, Any]] = {"label": None, "train_list": None, "val_list": None, "test_list": None,
                                        "class_names": None, "train_json": None, "val_json": None, "test_json": None,
                                        "fewshot": None}

    @model_validator(mode="after")
    def _needs(self):
        if self.source in self._NEEDS_ROOT and not self.root:
            raise SettingError(f"data.source {self.source!r} needs data.root")
        if self.source == "manifest" and not self.manifest:
            raise SettingError("data.source 'manifest' needs data.manifest")
        needed = {"image-list": ("train_list", "test_list"), "inaturalist": ("train_json", "val_json")}
        unset = [f"data.{f}" for f in needed.get(self.source, ()) if not getattr(self, f)]
        if unset:
            raise SettingError(f"data.source {self.source!r} needs {' and '.join(unset)}")
        reads = source_options(self.source)
        ignored = sorted(self.model_fields_set - reads - self._EVERY_SOURCE)
        if ignored:
            raise SettingError(f"data.source {self.source!r} does not use data.{', data.'.join(ignored)} (it would "
                               f"be ignored); remove it. This source reads: {', '.join(sorted(reads))}.")
        return self

    def fingerprint_part(self) -> dict[str, Any]:
        """The fields that make the data (not the reporting thresholds ``shots``); fields added later are left
        out at their old-behaviour value, so a run folder recorded before them is still reused."""
        dump = self.model_dump(mode="json", exclude={"shots"})
        if self.longtail is not None and self.longtail.profile == "rounded":
            dump["longtail"].pop("profile")
        return {k: v for k, v in dump.items() if not (k in self._ADDED and v == self._ADDED[k])}

    def loader_options(self) -> dict[str, Any]:
        """The options the source's loader takes: every field it reads that has a value."""
        return {k: getattr(self, k) for k in sorted(source_options(self.source)) if getattr(self, k) is not None}


class GeneratorSection(_Strict):
    name: str = "ddpm"  # a registered generator (`synthaug list generators`)
    params: dict[str, Any] = Field(default_factory=dict)  # that generator's config

    @model_validator(mode="after")
    def _valid(self):
        generator_config(self.name, self.params)
        return self


class PlanConfig(_Strict):
    # balance / fixed / ratio: per-class counts (single-label data); rare-attributes: copies of real images
    # that carry a rare attribute class, with their label vector and caption (multi-attribute data)
    strategy: Literal["balance", "fixed", "ratio", "rare-attributes"] = "balance"
    target: int | None = Field(None, ge=0)  # balance: fill every class up to this (None: the largest class)
    counts: dict[str, int] = Field(default_factory=dict)  # fixed: {class name: images}
    ratio: float = Field(1.0, ge=0)  # ratio: synthetic = ratio × real per class
    # rare-attributes: classes in these shot groups (data.shots thresholds on training counts) are rare
    rare_shots: list[Literal["few", "medium", "many"]] = Field(default_factory=lambda: ["few"])
    per_source: int | None = Field(None, ge=1)  # rare-attributes: images per source image (or give `total`)
    total: int | None = Field(None, ge=1)  # rare-attributes: images in all, rarest sources first
    caption_template: str | None = None  # rare-attributes: None = "A person wearing {attributes} clothes"
    batch_size: int = Field(64, ge=1)  # generation batch size (does not change any image)
    # generate ceil(factor × count) images per class so that each class still reaches its count after the
    # filters; arms take the first `count` kept images of each class (per-class strategies only)
    overgenerate: float = Field(1.0, ge=1)
    # images per durable batch of the synthetic store: one file-system sync + one manifest fsync per batch; a
    # crash loses at most the unflushed batch, which a rerun makes again (does not change any image)
    sync_every: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _rare_attributes_size(self):
        if self.strategy == "rare-attributes" and self.overgenerate != 1:
            raise SettingError(f"plan.overgenerate ({self.overgenerate}) applies to per-class plans (strategy balance, "
                               "fixed or ratio), not to rare-attributes; remove it.")
        if self.strategy == "rare-attributes" and (self.per_source is None) == (self.total is None):
            raise SettingError("plan.strategy 'rare-attributes' needs exactly one of plan.per_source (images per "
                             f"source image) and plan.total (images in all), but got per_source={self.per_source}, "
                             f"total={self.total}")
        return self


class PseudoConfig(_Strict):
    classifier_arm: str = "real-ce"  # the real-only arm whose classifier labels unconditional samples
    count: int | None = Field(None, ge=1)  # None: as many as the generation plan (the control's "same count")


# a folder name: letters, digits, . _ + -, not starting with "." (hidden), so neither "", "..", "/abs" nor "a/b"
FOLDER_NAME = r"^[\w][\w.+-]*$"


class ArmConfig(_Strict):
    name: str = Field(pattern=FOLDER_NAME)  # a folder name (FOLDER_NAME)
    synthetic: Literal["none", "generated", "pseudo"] = "none"  # which synthetic set the arm may use
    train: dict[str, Any] = Field(default_factory=dict)  # overrides of the top-level train section
    # synthetic: generated arms train on the images the `filters` keep; False: on the unfiltered set (the same
    # count per class, the first items of the plan), e.g. to compare filtered with unfiltered
    use_filters: bool = True


class JudgeConfig(_Strict):
    enabled: bool = True  # check synthetic labels with a classifier trained on the balanced real pool
    epochs: int = 5


DEFAULT_ARMS = [
    {"name": "real-ce", "train": {"loss": "ce", "mixing": "real-only"}},
    {"name": "real-bsm", "train": {"loss": "balanced-softmax", "mixing": "real-only"}},
    {"name": "oversample", "train": {"loss": "ce", "mixing": "oversample"}},
    {"name": "synth-combined", "synthetic": "generated", "train": {"loss": "ce", "mixing": "combined"}},
    {"name": "synth-balanced-batch", "synthetic": "generated", "train": {"loss": "ce", "mixing": "balanced-batch"}},
    # Balanced Softmax on real + synthetic, with the prior of the label mix the batches follow (prior: auto)
    {"name": "synth-bsm", "synthetic": "generated", "train": {"loss": "balanced-softmax", "mixing": "combined"}},
    # the strongest non-generative baseline (oversampling) plus the synthetic images: every class's draws at
    # least half its real images, so a class with 4 images is not drowned by its synthetic ones
    {"name": "synth-oversample", "synthetic": "generated", "train": {"loss": "ce", "mixing": "oversample-synthetic"}},
    {"name": "pseudo-combined", "synthetic": "pseudo", "train": {"loss": "ce", "mixing": "combined"}},
]

SYNTHETIC_COMPOSITIONS = {"combined", "balanced-batch", "rsp", "two-phase", "oversample-synthetic"}


class ExperimentConfig(_Strict):
    name: str = "experiment"  # the run folder's name, output_dir/<name>: a folder name (FOLDER_NAME)
    seed: int = 0  # data subsampling, generator training, plan item seeds
    seeds: list[int] = Field(default_factory=lambda: [0])  # classifier seeds (mean ± std over these)
    output_dir: str = "runs"
    device: str = "auto"
    progress: bool = True
    data: DataConfig = Field(default_factory=DataConfig)
    generator: GeneratorSection = Field(default_factory=GeneratorSection)
    plan: PlanConfig = Field(default_factory=PlanConfig)
    pseudo: PseudoConfig = Field(default_factory=PseudoConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    arms: list[ArmConfig] = Field(default_factory=lambda: [ArmConfig(**a) for a in DEFAULT_ARMS])
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)  # studies and fidelity (synthaug.evaluate)
    # keep / reject every generated image before arms train on it (applied in order; see synthaug.filters)
    filters: list[AnyFilterConfig] = Field(default_factory=list)
    tune: TuneConfig | None = None  # Optuna search around one arm (`synthaug tune`); None: no tuning

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, name: str) -> str:
        if not re.fullmatch(FOLDER_NAME, name):
            raise SettingError(
                f"name {name!r} must be a folder name, the run folder output_dir/<name>: letters, digits and . _ + "
                "-, not starting with '.' (so not empty, not '..', no '/' or '\\', not absolute, not hidden). Put "
                "the folder the runs go to in output_dir instead, e.g. --set output_dir=/data/runs --set name=exp1.")
        return name

    @model_validator(mode="after")
    def _run_dir_inside_output_dir(self):
        output_dir = os.path.abspath(self.output_dir)
        if os.path.dirname(os.path.abspath(self.run_dir)) != output_dir:  # the name's rule ensures it; kept as a guard
            raise SettingError(f"name {self.name!r}: the run folder {self.run_dir} is not inside output_dir "
                               f"{self.output_dir}; use a plain folder name.")
        return self

    @model_validator(mode="after")
    def _arms_valid(self):
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise SettingError(f"arms: names must be unique, got {names}")
        used_top: set[str] = set()
        top_set = _fields_set(self.train)
        for i, arm in enumerate(self.arms):
            cfg = self.arm_train(arm, where=f"arms.{i}.train")
            if arm.synthetic == "none" and cfg.mixing in SYNTHETIC_COMPOSITIONS and not cfg.relabel.weight:
                raise SettingError(f"arms.{i} ({arm.name}): mixing {cfg.mixing!r} needs synthetic images; set "
                                   "synthetic: generated or pseudo (or train.relabel, stand-ins made from real "
                                   "images)")
            # a setting this arm would silently ignore is an error where the arm sets it; a top-level one
            # only if no arm reads it
            bad = cfg.inapplicable(set(_flat_keys(arm.train)))
            if bad:
                field, why = next(iter(bad.items()))
                raise SettingError(f"arms.{i}.train.{field} ({arm.name}): {why}")
            used_top |= top_set - set(cfg.inapplicable(top_set))
        unused = sorted(top_set - used_top)
        if unused:
            why = self.arm_train(self.arms[0]).inapplicable({unused[0]}).get(unused[0], "")
            raise SettingError(f"train.{unused[0]} is read by no arm (it would be ignored): {why}")
        if any(a.synthetic == "pseudo" for a in self.arms) and self.pseudo.classifier_arm not in names:
            raise SettingError(f"pseudo.classifier_arm {self.pseudo.classifier_arm!r} is not an arm; arms: {names}")
        if not self.seeds:
            raise SettingError("seeds must list at least one seed")
        self._filters_valid()
        return self

    def _filters_valid(self) -> None:
        check_filters(self.filters)
        for i, arm in enumerate(self.arms):
            if "use_filters" in arm.model_fields_set and arm.synthetic != "generated":
                raise SettingError(f"arms.{i}.use_filters ({arm.name}) applies to arms with synthetic: generated, but "
                                   f"this arm has synthetic: {arm.synthetic}; remove it.")
        if self.plan.overgenerate != 1 and not self.filters:
            raise SettingError(f"plan.overgenerate ({self.plan.overgenerate}) makes extra images for filters to reject, "
                               "but no filters are configured (they would go unused); add filters or remove it.")
        real_only = {a.name: a for a in self.arms if a.synthetic == "none"}
        for i, f in enumerate(self.filters):
            if getattr(f, "classifier_arm", None) is not None and f.classifier_arm not in real_only:
                raise SettingError(
                    f"filters.{i}.classifier_arm {f.classifier_arm!r} must name a real-only arm (synthetic: none; "
                    f"trained on the training split only); such arms: {sorted(real_only)}. Add one, e.g. {{name: "
                    "oversample, train: {loss: ce, mixing: oversample}}.")

    def arm_train(self, arm: ArmConfig, where: str = "train") -> TrainConfig:
        """The arm's training config: the top-level ``train`` section with the arm's overrides (fields the
        user set at either level stay marked as set)."""
        merged = _deep_merge(self.train.model_dump(exclude_unset=True), arm.train)
        try:
            return TrainConfig(**merged)
        except ValidationError as e:
            raise SettingError(_format_errors(e, where, TrainConfig)) from None

    def arm(self, name: str) -> ArmConfig:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"No arm {name!r}; arms: {[a.name for a in self.arms]}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _fields_set(model: BaseModel) -> set[str]:
    """Dotted names of the fields the user set explicitly (``model``'s nested fields as ``model.name``)."""
    return set(_flat_keys(model.model_dump(exclude_unset=True)))


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        keys += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and k == "model" else [f"{prefix}{k}"]
    return keys


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _format_errors(e: ValidationError, prefix: str = "", root: type[BaseModel] | None = None) -> str:
    """One line per error: the dotted field, pydantic's message and the value given; for an unknown key in
    ``root``'s tree the likely fix (:func:`~synthaug.config_hints.unknown_key_hint`); a validator's own message
    (which names its fields) without pydantic's "Value error, " prefix and the section's whole input."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        loc = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        if err["type"] == "value_error" and "error" in err.get("ctx", {}):
            message = str(err["ctx"]["error"]).lstrip()  # a whole-config check names its own fields
            parts.append(f"  {loc}: {message}" if loc else f"  {message}")
            continue
        line = f"  {loc or '(top level)'}: {err['msg']} (got {err.get('input')!r})"
        if err["type"] == "extra_forbidden" and root is not None and err["loc"]:
            line += f"; {hint}" if (hint := unknown_key_hint(root, err["loc"])) else ""
        parts.append(line)
    return "\n".join(parts)


def apply_override(raw: dict, assignment: str) -> None:
    """Applies one ``dotted.key=value`` override in place; the value is parsed as YAML.

    Raises:
        ConfigError: naming the override and what is wrong with it (no ``=``, a value that is not YAML, an
            index past the end of a list, a key under a plain value).
    """
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment}: {key!r} is not a dotted key like train.epochs.")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        problem = str(e).splitlines()[0]
        raise ConfigError(f"--set {assignment}: the value {value!r} is not valid YAML ({problem}); quote it, e.g. "
                          f"--set '{key}=\"{value}\"', or complete it.") from None
    node: Any = raw
    for i, p in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                valid = f"indices 0-{len(node) - 1}" if node else "no entries"
                raise ConfigError(f"--set {assignment}: {where} is a list with {len(node)} entries ({valid}), so "
                                  f"{p!r} does not name one; set the whole list instead, e.g. --set "
                                  f"'{where}=[...]'.")
            if last:
                node[int(p)] = parsed
            else:
                node = node[int(p)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment}: {where} is a single value ({node!r}), not a section, so it "
                              f"has no key {p!r}.")
        if last:
            node[p] = parsed
        else:
            if p not in node or node[p] is None:
                path = ".".join(parts[: i + 1])
                if parts[i + 1].isdigit():
                    raise ConfigError(f"--set {assignment}: {path} is not in the config (its default applies), so "
                                      f"entry {parts[i + 1]} cannot be set; set the whole list, e.g. --set "
                                      f"'{path}=[...]'.")
                node[p] = {}
            node = node[p]


def build_config(raw: dict, overrides: list[str] = (), source: str = "config") -> ExperimentConfig:
    raw = copy.deepcopy(raw or {})
    for o in overrides:
        if o.split("=", 1)[0].startswith("arms.") and "arms" not in raw:
            raw["arms"] = copy.deepcopy(DEFAULT_ARMS)
        apply_override(raw, o)
    try:
        return ExperimentConfig(**raw)
    except ValidationError as e:
        raise ConfigError(f"Invalid config {source}:\n{_format_errors(e, root=ExperimentConfig)}") from None
    except (KeyError, ValueError) as e:
        raise ConfigError(f"Invalid config {source}: {e}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Reads a YAML experiment config (UTF-8, ``yaml.safe_load``), applies overrides, validates.

    Raises:
        ConfigError: a missing or unreadable file, bytes that are not UTF-8 (line and column), YAML that does not
            parse, an empty file (write ``{}`` to run on every default), or an invalid field.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} not found." if not path.exists() else
                          f"Config file {path} is not a file (a folder or device); give the YAML file's path.")
    try:
        text = read_text(path, "experiment config")
    except DataError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"Config file {path} cannot be read ({e.strerror}); make it readable (e.g. `chmod u+r "
                          f"{path}`).") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if raw is None:  # an empty file (or comments only) is more often a mistake than a wish for every default
        raise ConfigError(f"Config file {path} is empty (no settings, or only comments). Write the experiment's "
                          "settings in it; to run on every default, write `{}` in it (or run `synthaug demo`).")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}.")
    return build_config(raw, overrides, source=str(path))


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able config parts (decides whether a finished stage is still valid)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_config(cfg: ExperimentConfig, *, resolved: bool = False) -> str:
    """The config as YAML: as given (every field the user set, after overrides), which loads back to the same
    config; or ``resolved``, every field with its value (for reading: it repeats defaults, including
    settings that the chosen source, loss or mixing does not read)."""
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=not resolved), sort_keys=False)
