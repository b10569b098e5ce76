"""Classifier training. Configs and registries (:mod:`synthaug.train.config`) are plain data; the names below
resolve lazily (PEP 562), so ``import synthaug.train.config`` does not import torch."""

from synthaug.train.config import AUGMENTS, BATCH_COMPOSITION, LOSSES, MIXUP_CUTMIX, ModelConfig, TrainConfig

_LAZY = {"predict": "loop", "train_classifier": "loop", "create_loss": "losses", "make_batches": "batch_composition",
         "batch_prior": "batch_composition",
         "create_classifier": "models", "load_classifier": "models", "parameter_counts": "models"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"synthaug.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'synthaug.train' has no attribute {name!r}")


__all__ = ["AUGMENTS", "BATCH_COMPOSITION", "LOSSES", "MIXUP_CUTMIX", "ModelConfig", "TrainConfig", "batch_prior",
           "create_classifier", "create_loss", "load_classifier", "make_batches", "parameter_counts", "predict",
           "train_classifier"]
