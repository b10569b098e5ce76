"""Loading and sampling helpers shared by the diffusers-based generators (sd-text2img, sd-finetune, mvc,
unclip-augcond).

- :func:`resolve_checkpoint` tells a local pipeline folder from a hub id and fails fast, with the fix, when
  neither is there;
- :func:`load_pipeline` wraps ``from_pretrained`` (``local_files_only`` for local folders, dtype checks, clear
  errors instead of diffusers' ``OSError``), then places the pipeline on the device;
- :func:`set_scheduler` swaps the sampler by name, keeping the checkpoint's noise schedule;
- :func:`item_generators` gives one seeded ``torch.Generator`` per plan item, the key to batch-independent
  results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import diffusers
import torch
from diffusers import (
    AutoPipelineForText2Image, DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler,
)
from diffusers.utils import deprecation_utils

from synthaug.plan import PlanItem
from synthaug.torch_utils import torch_dtype
from synthaug.utils import read_json

from synthaug.generators.configs import Precision, SchedulerName  # noqa: E402  (plain data)
from synthaug.errors import SettingError, MissingFileError

# name -> (class, overrides applied on top of the checkpoint's scheduler config)
SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
}

# a hub id to show in messages, by pipeline class: never suggest a text-to-image model for an unCLIP slot
_HUB_EXAMPLES = {None: "stable-diffusion-v1-5/stable-diffusion-v1-5",
                 "StableUnCLIPImg2ImgPipeline": "stabilityai/stable-diffusion-2-1-unclip-small"}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPE_KWARG = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")


def _expected_layout(pipeline: str | type | None) -> str:
    """The sub-folders a pipeline of that class has, for messages ("" when the class is not fixed)."""
    cls = getattr(diffusers, pipeline, None) if isinstance(pipeline, str) else pipeline
    if not isinstance(cls, type) or not issubclass(cls, DiffusionPipeline):
        return ""
    required = [k for k in cls._get_signature_keys(cls)[0] if k not in cls._optional_components]
    return f" (a {cls.__name__} folder holds model_index.json and {', '.join(f'{k}/' for k in required)})"


def resolve_checkpoint(model: str, *, field: str = "generator.params.model",
                       pipeline: str | type | None = None) -> tuple[str, bool]:
    """Decides whether ``model`` names a local pipeline folder or a hub id.

    Args:
        model: a folder saved with ``save_pretrained`` (holding ``model_index.json``) or a hub id
            ("stable-diffusion-v1-5/stable-diffusion-v1-5").
        field: the config field, for error messages.
        pipeline: the pipeline class (name) it must be, if fixed: messages then give its folder layout and a
            hub id of that kind.

    Returns:
        ``(path_or_id, is_local)``.

    Raises:
        FileNotFoundError: a path-like value that does not exist, or a folder without ``model_index.json``.
        ValueError: a single-file checkpoint (.safetensors/.ckpt) rather than a pipeline folder.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise MissingFileError(
                f"{field}={model!r} is a folder but holds no model_index.json, so it is not a diffusers "
                "pipeline. Save one there with `pipe.save_pretrained(folder)`, or give a hub id.")
        return str(path.resolve()), True
    if path.is_file() or model.endswith(_SINGLE_FILE_SUFFIXES):
        raise SettingError(
            f"{field}={model!r} is a single-file checkpoint; a diffusers pipeline folder or hub id is "
            "needed. Convert it once with "
            "`StableDiffusionPipeline.from_single_file(path).save_pretrained(folder)`.")
    looks_like_path = model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1
    if looks_like_path:
        raise MissingFileError(
            f"{field}={model!r}: no such folder (resolved to {path.resolve()}). Give the folder of a "
            f"pipeline saved with `save_pretrained`{_expected_layout(pipeline) or ' (it holds model_index.json)'}, "
            f"or a hub id such as {_HUB_EXAMPLES.get(_class_name(pipeline), _HUB_EXAMPLES[None])!r}.")
    return model, False


def _class_name(pipeline: str | type | None) -> str | None:
    return pipeline.__name__ if isinstance(pipeline, type) else pipeline


def check_components(folder: Path, *, field: str, model: str, skip: set[str] = frozenset()) -> None:
    """Every component ``model_index.json`` lists has its sub-folder, and model components their safetensors
    weights, so a missing ``vae/`` is named (diffusers would report a config.json missing at the top).

    Raises:
        MissingFileError: a listed component without its folder or without weights.
        SettingError: a component whose weights are only pickle files (``.bin``/``.ckpt``), which are not loaded.
    """
    index = read_json(folder / "model_index.json")
    redo = ("Copy the whole pipeline folder again (every sub-folder `save_pretrained` wrote), or save it again "
            "with `pipe.save_pretrained(folder)`.")
    for name, spec in index.items():
        if name.startswith("_") or name in skip or not (isinstance(spec, list) and len(spec) == 2 and spec[0]):
            continue
        sub = folder / name
        if not sub.is_dir() or not any(sub.iterdir()):
            raise MissingFileError(
                f"{field}={model!r}: the pipeline folder {folder} has "
                f"{'an empty' if sub.is_dir() else 'no'} {name}/ sub-folder, but its model_index.json lists the "
                f"component {name!r} "
                f"({spec[1]}). {redo}")
        if (sub / "config.json").is_file() and not any(sub.glob("*.safetensors")):
            pickles = sorted(p.name for p in sub.iterdir() if p.suffix in _PICKLE_SUFFIXES)
            if pickles:
                raise SettingError(
                    f"{field}={model!r}: component {name}/ holds only pickle weights {pickles}, which synthaug "
                    "does not load (unpickling can run code). Convert them once, where you trust the file: "
                    "`DiffusionPipeline.from_pretrained(folder).save_pretrained(new_folder)` writes safetensors.")
            raise MissingFileError(f"{field}={model!r}: component {name}/ in {folder} has a config.json but no "
                                   f"weights (*.safetensors). {redo}")


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    """The torch dtype for ``precision``; fp16 needs CUDA.

    Raises:
        ValueError: for fp16 on a non-CUDA device or an unknown precision.
    """
    if precision == "fp16" and device.type != "cuda":
        raise SettingError(f"dtype='fp16' needs a CUDA device, but the device is {device}; "
                         "use 'bf16' or 'fp32'.")
    return torch_dtype(precision)


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The ``from_pretrained`` keyword for a dtype: ``dtype`` in newer diffusers (where ``torch_dtype`` is
    deprecated), ``torch_dtype`` in older ones."""
    return {_DTYPE_KWARG: dtype}


def pipeline_class(name: str | type) -> type:
    """``"auto"`` -> ``AutoPipelineForText2Image``; any other name -> that diffusers pipeline class.

    Raises:
        ValueError: if diffusers has no pipeline class of that name.
    """
    if not isinstance(name, str):
        return name
    if name == "auto":
        return AutoPipelineForText2Image
    cls = getattr(diffusers, name, None)
    is_auto = name.startswith("AutoPipeline")
    if not (isinstance(cls, type) and (is_auto or issubclass(cls, DiffusionPipeline))):
        raise SettingError(f"pipeline={name!r} is not a diffusers pipeline class; use 'auto' or a class name "
                         "such as 'StableDiffusionPipeline' or 'StableDiffusionXLPipeline'.")
    return cls


def load_pipeline(
    model: str, *, device: torch.device, pipeline: str | type = "auto", dtype: Precision = "fp32",
    local_files_only: bool = False, field: str = "generator.params.model", **components: Any,
) -> DiffusionPipeline:
    """Loads a diffusers pipeline from a local folder or hub id and moves it to ``device``.

    Local folders load with ``local_files_only=True``, so nothing is looked up on the network; hub ids use the
    HF cache and the network unless ``local_files_only`` (or ``HF_HUB_OFFLINE=1``) says otherwise. The
    safety checker is not loaded. Attention is diffusers' default (PyTorch SDPA).

    Args:
        model: pipeline folder or hub id (see :func:`resolve_checkpoint`).
        device: where to put the pipeline.
        pipeline: "auto" (``AutoPipelineForText2Image``), a diffusers pipeline class name, or a class.
        dtype: weights' precision: "fp32", "bf16" or "fp16" (CUDA only).
        local_files_only: never contact the hub, even for hub ids.
        field: the config field holding ``model``, for error messages.
        **components: components to use instead of the checkpoint's (``unet=...``).

    Raises:
        FileNotFoundError: when the checkpoint cannot be found or read (a missing component folder, missing or
            damaged weights); the message says where it was looked for and how to provide it.
        SettingError: a local component with pickle weights only (only safetensors are loaded).
    """
    source, is_local = resolve_checkpoint(model, field=field, pipeline=pipeline)
    cls = pipeline_class(pipeline)
    kwargs: dict[str, Any] = {**dtype_kwargs(check_precision(dtype, device)),
                              "local_files_only": is_local or local_files_only, "use_safetensors": True}
    if _has_safety_checker(source, is_local):  # generated training data is not shown to people
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if is_local:
        check_components(Path(source), field=field, model=model,
                         skip=set(components) | ({"safety_checker"} if "safety_checker" in kwargs else set()))
    try:
        pipe = cls.from_pretrained(source, **kwargs, **components)
    except OSError as e:  # diffusers/huggingface_hub report missing files and hub failures as OSError
        raise _not_found(model, source, is_local, field, local_files_only, e, pipeline) from e
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _has_safety_checker(source: str, is_local: bool) -> bool:
    if not is_local:
        return True  # SD 1.x/2.x hub checkpoints ship one; others ignore the keyword with a warning
    return "safety_checker" in read_json(Path(source) / "model_index.json")


def _not_found(model: str, source: str, is_local: bool, field: str, local_files_only: bool,
               err: Exception, pipeline: str | type | None = None) -> FileNotFoundError:
    from huggingface_hub import constants as hf

    if is_local:
        damaged = "Unable to load weights" in str(err)
        fix = ("A weights file is damaged or not in safetensors format (truncated by an interrupted copy?): copy "
               "the pipeline folder again or save it again with `save_pretrained`." if damaged else
               f"The folder must hold model_index.json and one sub-folder per component{_expected_layout(pipeline)}, "
               "as written by `save_pretrained`.")
        return MissingFileError(f"Could not load the diffusers pipeline in folder {source} ({field}={model!r}): "
                                f"{str(err).strip()} {fix}")
    download = (f"Download it once on a machine with network (`hf download {model}`, or "
                f"DiffusionPipeline.from_pretrained('{model}').save_pretrained('<folder>'))")
    taken = f"Could not load {field}={model!r}: no local folder {Path(model).resolve()} exists, so it was taken as a hub id"
    if hf.HF_HUB_OFFLINE or local_files_only:
        why = "HF_HUB_OFFLINE=1 is set" if hf.HF_HUB_OFFLINE else f"{field.rsplit('.', 1)[0]}.local_files_only is true"
        return MissingFileError(
            f"{taken}; since {why}, only the local Hugging Face cache ({hf.HF_HUB_CACHE}) was searched, with no "
            f"hub look-up, and it is not there. {download}, then copy that cache into {hf.HF_HUB_CACHE} or point "
            f"{field} at the saved folder.")
    return MissingFileError(
        f"{taken} and looked for in the Hugging Face cache, then on the Hub, which failed: {str(err).strip()} Check "
        f"the id and the network (gated models need `hf auth login`). To work offline: {download}, then point "
        f"{field} at that folder, or keep the hub id and set HF_HUB_OFFLINE=1 to use the cached copy.")


def set_scheduler(pipe: DiffusionPipeline, name: SchedulerName) -> None:
    """Replaces ``pipe.scheduler`` with the sampler ``name``, built from the checkpoint's scheduler config
    (so the noise schedule the model was trained with is kept). ``"default"`` keeps the checkpoint's own.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if name == "default":
        return
    if name not in SCHEDULERS:
        raise SettingError(f"scheduler={name!r} is not known; valid: default, {', '.join(SCHEDULERS)}.")
    cls, overrides = SCHEDULERS[name]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)


def optimize_for_inference(pipe: DiffusionPipeline, *, channels_last: bool = False,
                           compile: bool = False) -> None:
    """Optional GPU speed-ups from diffusers' docs: channels-last memory format and ``torch.compile`` of the
    denoiser (the first batch is slow while it compiles)."""
    denoiser_name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    denoiser = getattr(pipe, denoiser_name, None)
    if denoiser is None:
        return
    if channels_last:
        denoiser.to(memory_format=torch.channels_last)
        if getattr(pipe, "vae", None) is not None:
            pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        mode = "reduce-overhead" if denoiser.device.type == "cuda" else "default"
        setattr(pipe, denoiser_name, torch.compile(denoiser, mode=mode, fullgraph=True))


def item_generators(items: Sequence[PlanItem]) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per item, seeded with the item's seed.

    Passed as ``generator=[...]`` to a diffusers pipeline, each image's initial noise (and any sampler noise)
    comes from its own generator, so an item gives the same image whatever batch it is in. CPU generators
    (diffusers' advice) make the noise the same on CPU and GPU.
    """
    return [torch.Generator("cpu").manual_seed(int(it.seed)) for it in items]
