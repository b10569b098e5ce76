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
from synthaug.utils import read_json, torch_dtype

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

_DTYPE_KWARG = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
_OFFLINE_HINT = (
    "To use a hub checkpoint offline, download it once on a machine with network (`hf download {id}`, or "
    "DiffusionPipeline.from_pretrained('{id}').save_pretrained('<folder>')), then either point {field} at "
    "that folder or keep the hub id and set HF_HUB_OFFLINE=1 (or {params}.local_files_only: true) so the "
    "cached copy in HF_HOME is used."
)


def resolve_checkpoint(model: str, *, field: str = "generator.params.model") -> tuple[str, bool]:
    """Decides whether ``model`` names a local pipeline folder or a hub id.

    Args:
        model: a folder saved with ``save_pretrained`` (holding ``model_index.json``) or a hub id
            ("stable-diffusion-v1-5/stable-diffusion-v1-5").
        field: the config field, for error messages.

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
            "pipeline saved with `save_pretrained` (it holds model_index.json), or a hub id such as "
            "'stable-diffusion-v1-5/stable-diffusion-v1-5'.")
    return model, False


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
        FileNotFoundError: when the checkpoint cannot be found or read; the message says where it was looked
            for and how to provide it.
    """
    source, is_local = resolve_checkpoint(model, field=field)
    cls = pipeline_class(pipeline)
    kwargs: dict[str, Any] = {**dtype_kwargs(check_precision(dtype, device)),
                              "local_files_only": is_local or local_files_only}
    if _has_safety_checker(source, is_local):  # generated training data is not shown to people
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = cls.from_pretrained(source, **kwargs, **components)
    except OSError as e:  # diffusers/huggingface_hub report missing files and hub failures as OSError
        raise _not_found(model, source, is_local, field, kwargs["local_files_only"], e) from e
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _has_safety_checker(source: str, is_local: bool) -> bool:
    if not is_local:
        return True  # SD 1.x/2.x hub checkpoints ship one; others ignore the keyword with a warning
    return "safety_checker" in read_json(Path(source) / "model_index.json")


def _not_found(model: str, source: str, is_local: bool, field: str, offline: bool,
               err: Exception) -> FileNotFoundError:
    params = field.rsplit(".", 1)[0]
    if is_local:
        return FileNotFoundError(
            f"Could not load the diffusers pipeline in folder {source} ({field}={model!r}): {err}. The "
            "folder must hold model_index.json and one sub-folder per component, as written by "
            "`save_pretrained`.")
    where = "the local HF cache only (offline)" if offline else "the HF cache, then the Hugging Face Hub"
    return FileNotFoundError(
        f"Could not load {field}={model!r}: no local folder {Path(model).resolve()} exists, so it was taken "
        f"as a hub id and looked for in {where}. {err} "
        + _OFFLINE_HINT.format(id=model, field=field, params=params))


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
