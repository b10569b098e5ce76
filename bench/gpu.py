"""GPU throughput (issue 11, part 4): ``sd-text2img`` on a Stable-Diffusion-1.5-shaped pipeline with random
weights, against diffusers' defaults, side by side in one process on one GPU; and the demo DDPM on the GPU.

    python bench/gpu.py [--batches 1 8 16] [--steps 50] [--size 512] [--repeats 2] [--ddpm runs/demo/generator/model]
    python bench/gpu.py --tiny          # a toy pipeline: a smoke run of this script on a CPU

The pipeline is built from configs (once, into ``--workdir``; fp16 safetensors, ~2 GB): the SD 1.x UNet (320 /
640 / 1,280 / 1,280 channels, cross-attention 768, 8 heads), its VAE (128 / 256 / 512 / 512) and a CLIP
ViT-L/14-sized text encoder (12 layers, 768 wide, 77 tokens), with PNDM as SD 1.5 ships — the real model's
FLOPs, nothing downloaded (the tokenizer is the tests' small BPE vocabulary; token count, not vocabulary, sets
the cost). Random weights make noise images; speed does not depend on the weights.

Rows, per batch size (``prompt`` × batch, guidance 7.5, ``--steps`` steps, ``--size`` px):

* ``diffusers defaults``: ``StableDiffusionPipeline.from_pretrained(folder).to(device)`` and a plain call —
  fp32 weights, PyTorch SDPA attention, the guidance pair batched (diffusers always does);
* ``sd-text2img`` rows: synthaug's generator (per-item seeded generators, as the store runs it) with
  ``dtype: auto`` (fp16 on CUDA), then + ``channels_last``, bf16, and + ``enable_compile`` (``torch.compile``,
  "reduce-overhead" on CUDA; the warm-up call compiles and is not timed);
* images/s (``--repeats`` timed calls after one warm-up), × the defaults' images/s, and peak GPU memory
  (``torch.cuda.max_memory_allocated`` over the timed calls). GPU model and driver are printed first.

``--ddpm FOLDER`` (a trained ``ddpm`` model folder, e.g. ``runs/demo/generator/model``, 6 MB) also times the demo
generator's sampling on the device at the sampler settings saved with it and at batch 128 / 512.

On the lent GPU machines (no network, no diffusers / pydantic / optuna in their image) carry the missing
wheels: ``bench/gpu_wheels.sh`` downloads them into ``.gpu-wheels/`` (ignored by git); pass
``carry=[".gpu-wheels", "runs/demo/generator/model"]`` and run ``bash bench/gpu_wheels.sh --install && python3
bench/gpu.py --ddpm runs/demo/generator/model``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]  # tests/tiny_sd.py: an offline CLIP tokenizer

PROMPT = "a photo of a dog"


def build_pipeline(folder: Path, *, tiny: bool) -> Path:
    """Saves an SD-1.5-shaped (or, ``tiny``, a toy) random-weight ``StableDiffusionPipeline`` to ``folder``."""
    if (folder / "model_index.json").is_file():
        return folder
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tiny_sd import build_tiny_sd_pipeline, tiny_clip_tokenizer

    if tiny:
        return build_tiny_sd_pipeline(folder)
    torch.manual_seed(0)
    tokenizer = tiny_clip_tokenizer(folder / "tokenizer")
    # UNet2DConditionModel's defaults are SD 1.x's blocks (320/640/1280/1280, 2 layers, 8 heads); SD 1.5's text
    # width is 768 and its latents 64 × 64 for 512 px
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14's text tower
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        projection_dim=768, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    return folder


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call: Callable[[], object], images: int, repeats: int, device: torch.device) -> tuple[float, float | None]:
    """(images/s over ``repeats`` calls after one warm-up call, peak GPU memory in GiB or None on a CPU)."""
    call()  # warm-up: kernels, cuDNN autotuning, torch.compile
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    synchronize(device)
    rate = images * repeats / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return rate, peak


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sd_rows(folder: Path, args, device: torch.device) -> None:
    from diffusers import StableDiffusionPipeline

    from synthaug.data.schema import LabelSchema
    from synthaug.generators import create_generator
    from synthaug.plan import PlanItem

    schema = LabelSchema.single(["dog", "cat"])
    size = {} if args.tiny else {"height": args.size, "width": args.size}
    ours = [("sd-text2img, dtype auto" + (" (fp16)" if device.type == "cuda" else " (fp32)"), {}),
            ("sd-text2img, + channels_last", {"channels_last": True}),
            ("sd-text2img, bf16, channels_last", {"dtype": "bf16", "channels_last": True}),
            ("sd-text2img, + torch.compile, channels_last", {"channels_last": True, "enable_compile": True})]
    print("| batch | setting | img/s | s/image | × diffusers defaults | peak GPU memory (GiB) |")
    print("|---|---|---|---|---|---|")
    for batch in args.batches:
        # fp32: what from_pretrained gives for fp32 checkpoints (this folder is stored in fp16 to halve its size)
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, torch_dtype=torch.float32).to(device)
        pipe.set_progress_bar_config(disable=True)
        base, peak = timed(lambda: pipe([PROMPT] * batch, num_inference_steps=args.steps, **size), batch,
                           args.repeats, device)
        row(batch, "diffusers defaults (fp32, SDPA)", base, base, peak)
        del pipe
        free(device)
        for label, settings in ours:
            gen = create_generator("sd-text2img", {"model": str(folder), "num_inference_steps": args.steps, **size,
                                                   **settings}, schema, device=device, progress=False)
            items = [PlanItem(f"dog-{i:05d}", (0,), 1000 + i, prompt=PROMPT) for i in range(batch)]
            rate, peak = timed(lambda: gen.sample(items), batch, args.repeats, device)
            row(batch, label, rate, base, peak)
            del gen
            free(device)


def row(batch: int, label: str, rate: float, base: float, peak: float | None) -> None:
    memory = "–" if peak is None else f"{peak:.1f}"
    print(f"| {batch} | {label} | {rate:.3f} | {1 / rate:.2f} | {rate / base:.2f}× | {memory} |", flush=True)


def ddpm_rows(model: Path, args, device: torch.device) -> None:
    """The demo generator (a trained ``ddpm`` model folder) sampling on ``device``."""
    from synthaug.data.schema import LabelSchema
    from synthaug.generators import create_generator
    from synthaug.plan import PlanItem

    schema = LabelSchema.from_dict(json.loads((model / "synthaug.json").read_text())["schema"])
    classes = schema.groups[0].classes
    print(f"\nddpm model {model} on {device}:")
    print("| batch | setting | img/s | peak GPU memory (GiB) |")
    print("|---|---|---|---|")
    for batch in (128, 512):
        for label, settings in (("dpmsolver++ 8 trailing, precision auto", {}),
                                ("+ torch.compile", {"enable_compile": True})):
            gen = create_generator("ddpm", {"checkpoint": str(model), "sampler": "dpmsolver++", "sampling_steps": 8,
                                            "guidance_scale": 1.0, **settings}, schema, device=device, progress=False)
            items = [PlanItem(f"x-{i:05d}", (i % len(classes),), i) for i in range(batch)]
            rate, peak = timed(lambda: gen.sample(items), batch, args.repeats, device)
            print(f"| {batch} | {label} | {rate:.1f} | {'–' if peak is None else f'{peak:.2f}'} |", flush=True)
            del gen
            free(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per row, after one warm-up call")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-gpu")
    parser.add_argument("--ddpm", type=Path, help="a trained ddpm model folder to time on the device too")
    parser.add_argument("--tiny", action="store_true", help="a toy pipeline (CPU smoke run of this script)")
    parser.add_argument("--skip-sd", action="store_true", help="only the --ddpm rows")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs; "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    else:
        print(f"no GPU: running on the CPU ({torch.get_num_threads()} threads); numbers are not GPU numbers")
    if not args.skip_sd:
        folder = build_pipeline(args.workdir / ("tiny-sd" if args.tiny else "sd15-random"), tiny=args.tiny)
        print(f"pipeline: {folder} ({'toy' if args.tiny else 'SD-1.5-shaped'}, random weights); "
              f"{args.steps} steps, guidance 7.5, {'native size' if args.tiny else f'{args.size} px'}, "
              f"{args.repeats} timed calls per row")
        sd_rows(folder, args, device)
    if args.ddpm:
        ddpm_rows(args.ddpm, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
