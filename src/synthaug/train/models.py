"""Classifiers: a small CNN for 28×28 digits and any timm backbone, with an MLP head whose logits are
sliced per label group (multi-head, multi-label)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from synthaug.data.schema import LabelSchema
from synthaug.train.checkpoint import CheckpointError, reading
from synthaug.train.config import ModelConfig
from synthaug.errors import SettingError, MissingFileError

log = logging.getLogger(__name__)


class SmallCNN(nn.Module):
    """Two conv blocks and global pooling: ~0.1 M parameters, enough for digits."""

    def __init__(self, in_chans: int = 1, width: int = 32, drop_rate: float = 0.0):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
                                 nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
                                 nn.MaxPool2d(2))

        self.features = nn.Sequential(block(in_chans, width), block(width, 2 * width),
                                      nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(True),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop_rate))
        self.num_features = 4 * width

    def forward(self, x):
        return self.features(x)


class Classifier(nn.Module):
    """Backbone → MLP head → one logit per class of every label group (sliced per group by the losses).

    ``normalization`` is the input mean and std the backbone's pretrained weights expect (``{"mean", "std"}``),
    or None for the presets' default (:func:`synthaug.train.augment.normalize`).
    """

    normalization: dict[str, list[float]] | None = None

    def __init__(self, backbone: nn.Module, num_features: int, schema: LabelSchema, head_hidden=(), dropout=0.0):
        super().__init__()
        self.backbone = backbone
        self.group_sizes = schema.group_sizes
        layers, width = [], num_features
        for h in head_hidden:
            layers += [nn.Dropout(dropout), nn.Linear(width, h), nn.ReLU(True)]
            width = h
        layers += [nn.Dropout(dropout), nn.Linear(width, schema.num_outputs)]
        self.head = nn.Sequential(*layers)

    def forward(self, x):
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> "Classifier":
        """Sets train/eval mode, but keeps frozen BatchNorm layers in eval mode.

        A BatchNorm layer whose weight and bias are frozen also keeps its running statistics (the pretrained
        ones): in train mode it would normalise with batch statistics and overwrite them, so the frozen
        layers would drift although none of their parameters train. (Keras does the same for layers with
        ``trainable = False``.)
        """
        super().train(mode)
        if mode:
            for m in self.modules():
                params = list(m.parameters(recurse=False))
                frozen = params and not any(p.requires_grad for p in params)
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and frozen:
                    m.eval()
        return self

    def split_logits(self, logits: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(logits, self.group_sizes, dim=1))


def _freeze(model: Classifier, config: ModelConfig) -> None:
    if config.freeze == "none":
        return
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    if config.freeze == "all-but-last" and config.trainable_stages > 0:
        info = getattr(model.backbone, "feature_info", None)
        if info is None:
            raise SettingError(f"Model {config.name!r} exposes no stages (timm feature_info); use freeze 'none' "
                             "or 'all-but-head'.")
        names = [f["module"] for f in info]
        if config.trainable_stages > len(names):
            raise SettingError(f"train.model.trainable_stages={config.trainable_stages} but {config.name!r} has "
                             f"{len(names)} stages {names}; use at most {len(names)}, or freeze: none.")
        stages = names[-config.trainable_stages:]
        for name, module in model.backbone.named_modules():
            if name in stages:
                for p in module.parameters():
                    p.requires_grad_(True)


def create_classifier(config: ModelConfig, schema: LabelSchema, in_chans: int) -> Classifier:
    """Builds the classifier; timm names accept ``pretrained`` (weights in timm's local cache) or ``weights`` (a
    local file or folder, see :func:`read_backbone_weights`).

    Raises:
        SettingError: an unknown model name (with close matches), or pretrained weights that cannot be loaded.
        MissingFileError: ``weights`` names no file, or a folder without timm's weight files.
        CheckpointError: the ``weights`` file cannot be read, or does not fit the model.
    """
    if config.name == "small-cnn":
        backbone = SmallCNN(in_chans, drop_rate=config.drop_rate)
        num_features = backbone.num_features
    else:
        if not timm.is_model(config.name):
            close = timm.list_models(f"*{config.name.split('_')[0]}*")[:8]
            raise SettingError(f"Unknown model {config.name!r} (train.model.name); 'small-cnn' or a timm model, "
                             f"e.g. {close or timm.list_models()[:5]}.")
        # drop_rate only when set: a few timm models take no drop_rate argument
        options = {"drop_rate": config.drop_rate} if config.drop_rate else {}
        state_dict = None
        if config.weights is not None:
            path, state_dict = read_backbone_weights(config.weights, config.name)
            # timm's own pretrained loading (its source "timm" reads `state_dict` before any cache or hub) drops
            # the classifier and adapts the first convolution to `in_chans`, as for its cached weights
            options["pretrained_cfg_overlay"] = {"state_dict": state_dict, "source": "timm"}
        try:
            backbone = timm.create_model(config.name, pretrained=config.pretrained or state_dict is not None,
                                         num_classes=0, in_chans=in_chans, **options)
        except TypeError as e:
            if "drop_rate" not in str(e):
                raise
            raise SettingError(f"timm model {config.name!r} takes no drop_rate, but train.model.drop_rate="
                               f"{config.drop_rate}; set drop_rate: 0 (or use dropout, before the head).") from None
        except (OSError, RuntimeError, ValueError) as e:
            if state_dict is not None:  # a tensor of another shape: weights of another model
                detail = " ".join(str(e).strip().splitlines()[:2])[:300]
                raise _not_this_model(path, config.name, f"{type(e).__name__}: {detail}") from None
            if not config.pretrained:
                raise
            raise SettingError(f"Could not load pretrained weights for {config.name!r} (train.model.pretrained: "
                             f"true): {type(e).__name__}: {e} Download them once with network access and "
                             "HF_HUB_OFFLINE unset (timm caches them in ~/.cache/huggingface), or point "
                             "train.model.weights at a downloaded weights file, or set train.model.pretrained: "
                             "false to train from random initialisation.") from None
        if state_dict is not None:
            backbone.pretrained_cfg.pop("state_dict", None)  # the model keeps its config, not a second weights copy
            _check_covered(backbone, state_dict, path, config.name)
        num_features = backbone.num_features
    model = Classifier(backbone, num_features, schema, config.head_hidden, config.dropout)
    model.normalization = pretrained_normalization(config, backbone, in_chans)
    _freeze(model, config)
    return model


# the weight files of a timm model's hub repository, in the order timm prefers them
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _weights_fix(name: str) -> str:
    return (f"download the weights of {name!r} (e.g. `huggingface-cli download timm/<its weights tag> --local-dir "
            "DIR` with network access) and set train.model.weights to DIR or to its model.safetensors, or remove "
            "train.model.weights to train from random initialisation.")


def weights_file(weights: str | Path, name: str) -> Path:
    """The file ``train.model.weights`` names: the file itself, or a folder's :data:`WEIGHT_FILES` (first found).

    Raises:
        MissingFileError: no such file, or a folder without either file (the message names the path and the fix).
    """
    path = Path(weights).expanduser()
    if path.is_dir():
        found = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
        if found is None:
            raise MissingFileError(f"train.model.weights: the folder {path} holds neither "
                                   f"{' nor '.join(WEIGHT_FILES)} (timm's weight files); point at the weights file "
                                   f"itself, or {_weights_fix(name)}")
        return found
    if not path.is_file():
        raise MissingFileError(f"train.model.weights: {path} does not exist. Give the path of a .safetensors file, "
                               f"a torch checkpoint or a folder with {WEIGHT_FILES[0]}; or {_weights_fix(name)}")
    return path


def read_backbone_weights(weights: str | Path, name: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """(file, state dict) of ``train.model.weights``: safetensors, or a torch checkpoint read with
    ``weights_only=True`` (nothing is unpickled), its ``state_dict`` / ``model`` entry when it has one (timm's
    reader: an EMA entry first, a ``module.`` prefix dropped).

    Raises:
        MissingFileError: see :func:`weights_file`.
        CheckpointError: the file cannot be read as weights (names the file and the fix).
    """
    from timm.models import load_state_dict

    path = weights_file(weights, name)
    with reading(path, fix=_weights_fix(name)):
        state_dict = load_state_dict(str(path), weights_only=True)
    return path, state_dict


def _check_covered(backbone: nn.Module, state_dict: dict, path: Path, name: str) -> None:
    """Refuses weights that leave part of the backbone at random initialisation: timm loads non-strictly once it
    drops the classifier, so a checkpoint of another model of the family (resnet18 for resnet34) would
    otherwise load silently in part. BatchNorm's ``num_batches_tracked`` counters may be absent."""
    missing = [k for k in backbone.state_dict() if k not in state_dict and not k.endswith("num_batches_tracked")]
    if missing:
        raise _not_this_model(path, name, f"it lacks {len(missing)} of the model's {len(backbone.state_dict())} "
                                          f"tensors, e.g. {', '.join(missing[:3])}")


def _not_this_model(path: Path, name: str, detail: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a checkpoint of timm model {name!r} in timm's format ({detail}). Point "
                           f"train.model.weights at {name!r}'s weights, or set train.model.name to the model the "
                           "file is for.")


def loads_weights(config: ModelConfig) -> bool:
    """Whether the backbone starts from trained weights (``pretrained``, or a ``weights`` file)."""
    return config.pretrained or config.weights is not None


def pretrained_normalization(config: ModelConfig, backbone: nn.Module, in_chans: int) -> dict | None:
    """The mean and std of a pretrained timm backbone's config (what its weights were trained with), for models
    with ``pretrained: true`` or ``weights`` whose config has one value per input channel; else None."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    if not loads_weights(config) or len(cfg.get("mean") or ()) != in_chans or len(cfg.get("std") or ()) != in_chans:
        return None
    return {"mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]]}


def pretrained_input_size(config: ModelConfig, backbone: nn.Module) -> int | None:
    """The image side a pretrained timm backbone's config names (``input_size``), for ``pretrained: true`` or
    ``weights``."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return int(cfg["input_size"][-1]) if loads_weights(config) and cfg.get("input_size") else None


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def save_classifier(model: Classifier, config: ModelConfig, schema: LabelSchema, in_chans: int,
                    image_size: int, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    trainable, total = parameter_counts(model)
    (folder / "classifier.json").write_text(json.dumps({
        "model": config.model_dump(mode="json"), "schema": schema.to_dict(), "in_chans": in_chans,
        "image_size": image_size, "normalization": model.normalization,
        "parameters": {"trainable": trainable, "total": total}}, indent=2))


def load_classifier(folder: str | Path, device: torch.device | str = "cpu") -> tuple[Classifier, dict]:
    """Loads a classifier saved by :func:`save_classifier` (safetensors; nothing is unpickled).

    Raises:
        MissingFileError: ``folder`` lacks ``classifier.json`` or ``model.safetensors``.
        CheckpointError: either file is damaged, or the weights do not fit the model ``classifier.json`` describes
            (the message names the file and says to retrain or point elsewhere).
    """
    folder = Path(folder)
    meta_path, weights = folder / "classifier.json", folder / "model.safetensors"
    for path in (meta_path, weights):
        if not path.is_file():
            raise MissingFileError(f"No classifier in {folder} (missing {path.name}); train one first, or point to "
                                   "a folder a synthaug training stage wrote (train/<arm>/seed<k>/model).")
    fix = (f"delete the stage folder that holds {folder} so that it is trained again, or point to another "
           "classifier folder.")
    with reading(meta_path, fix=fix):
        meta = json.loads(meta_path.read_text())
        # the saved weights replace the backbone's starting ones: neither the cache nor the weights file is read
        config = ModelConfig(**{**meta["model"], "pretrained": False, "weights": None})
        schema, in_chans = LabelSchema.from_dict(meta["schema"]), meta["in_chans"]
        meta["image_size"] = int(meta["image_size"])  # what every caller reads next
    model = create_classifier(config, schema, in_chans)
    with reading(weights, fix=fix):
        model.load_state_dict(load_file(weights))
    model.normalization = meta.get("normalization")
    return model.to(device).eval(), meta
