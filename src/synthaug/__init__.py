"""synthaug: diffusion-generated training images for imbalanced and few-shot classification.

The public Python API (the command line is a thin layer over it), imported lazily so that ``import synthaug``
stays light (no torch until a name that needs it is used):

- :func:`run`: a whole experiment from a config or its YAML path, returning the run's summary;
- :func:`open_run` and the stage functions (:func:`data_stage`, :func:`fit_generator`, :func:`synthetic_stage`,
  :func:`filter_stage`, :func:`train_arm`, :func:`judge_stage`, :func:`studies_stage`, :func:`report_stage`):
  one piece of a run at a time over its :class:`RunContext`;
- :func:`load_config`, :func:`load_source`, :func:`create_generator`, :func:`open_store` (the synthetic-store
  reader), :func:`train_classifier`: the parts on their own.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> "module:attribute", imported on first use (PEP 562)
_API = {
    "run": "synthaug.runner:run",
    "open_run": "synthaug.runner:open_run",
    "RunContext": "synthaug.runner.context:RunContext",
    "preflight": "synthaug.runner.pipeline:preflight",
    "data_stage": "synthaug.runner.data:data_stage",
    "fit_generator": "synthaug.runner.generate:fit_generator",
    "synthetic_stage": "synthaug.runner.generate:synthetic_stage",
    "filter_stage": "synthaug.runner.filter:filter_stage",
    "train_arm": "synthaug.runner.arms:train_arm",
    "judge_stage": "synthaug.runner.judge:judge_stage",
    "studies_stage": "synthaug.runner.studies:studies_stage",
    "report_stage": "synthaug.runner.report:report_stage",
    "load_config": "synthaug.config:load_config",
    "build_config": "synthaug.config:build_config",
    "load_source": "synthaug.data:load_source",
    "create_generator": "synthaug.generators:create_generator",
    "open_store": "synthaug.store:open_store",
    "SyntheticStore": "synthaug.store:SyntheticStore",
    "train_classifier": "synthaug.train:train_classifier",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'synthaug' has no attribute {name!r}")
    module, attribute = _API[name].split(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
