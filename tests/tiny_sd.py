"""Tiny random-weight Stable Diffusion components for offline tests.

Nothing here downloads: the CLIP tokenizer gets its own small byte-level BPE vocabulary written to
``vocab.json`` / ``merges.txt``, and every network is built from a config after ``torch.manual_seed(0)``, so
the fixtures are the same on every run. Shapes follow the dummy components of diffusers' Stable Diffusion
tests: a 2-level UNet (32, 64 channels) and a 2-level VAE, so images are ``TINY_IMAGE_SIZE`` (16) pixels
square and latents ``4 × TINY_LATENT_SIZE × TINY_LATENT_SIZE`` (4 × 8 × 8).

Usage (``tests/generators/conftest.py`` puts ``tests/`` on ``sys.path``; the package name ``tests`` is taken
by one that torch-fidelity installs, so import the module by its own name)::

    from tiny_sd import build_tiny_sd_pipeline
    model_dir = build_tiny_sd_pipeline(tmp_path / "tiny-sd")   # a StableDiffusionPipeline folder

or use the session fixture ``tiny_sd_dir`` from that conftest.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel,
)
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_IMAGE_SIZE = 16  # default pipeline output: unet sample_size (8) × VAE scale factor (2)
TINY_LATENT_SIZE = 8
MAX_LENGTH = 77  # CLIP's context length, as in every SD checkpoint

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Whole words given their own token (with CLIP's "</w>" end-of-word suffix). Digits need none: CLIP's
# pre-tokenizer splits numbers into single digits, and every single byte already has a "</w>" form.
PROMPT_WORDS = (
    "a", "photo", "of", "this", "is", "an", "image", "person", "wearing", "clothes", "digit", "number",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "cat", "dog",
    # DeepFashion-style attribute words
    "floral", "graphic", "striped", "embroidery", "pleat", "solid", "lattice", "sleeveless", "short",
    "medium", "long", "sleeve", "no", "dress", "mini", "maxi", "v", "neckline", "crew", "round", "cotton",
    "denim", "leather", "furry", "knitting", "chiffon", "conventional", "tight", "loose", "blurry", "low",
    "quality", "bad",
)


def _learn_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Learns BPE merges until every word is one token (most frequent pair first, ties alphabetical).

    Merges learnt this way re-tokenise each training word into that one token, as in Sennrich et al. (2016).
    """
    seqs = [list(w[:-1]) + [w[-1] + "</w>"] for w in dict.fromkeys(words)]
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in seqs):
        counts: dict[tuple[str, str], int] = {}
        for s in seqs:
            for pair in zip(s, s[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for s in seqs:
            i = 0
            while i < len(s) - 1:
                if (s[i], s[i + 1]) == best:
                    s[i : i + 2] = [s[i] + s[i + 1]]
                i += 1
    return merges


def tiny_clip_tokenizer(path: str | Path) -> CLIPTokenizer:
    """Writes a small CLIP BPE vocabulary to ``path`` and loads a ``CLIPTokenizer`` from it.

    The vocabulary holds the two special tokens, all 256 byte-level symbols (alone and with ``</w>``), so
    any text tokenises without error, and one whole-word token per word in ``PROMPT_WORDS``.

    Args:
        path: a folder; created if needed. ``vocab.json`` and ``merges.txt`` are written into it.

    Returns:
        The tokenizer, with ``model_max_length`` 77 as in Stable Diffusion.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [BOS, EOS] + symbols + [s + "</w>" for s in symbols]
    merges = _learn_merges(PROMPT_WORDS)
    tokens += [left + right for left, right in merges]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    (path / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(path, model_max_length=MAX_LENGTH)


def tiny_clip_text_config(vocab_size: int = 1000, **overrides) -> CLIPTextConfig:
    """A 2-layer CLIP text config: hidden size 32, projection 32, 77 positions; ``overrides`` replace fields.

    Token ids match :func:`tiny_clip_tokenizer` (bos 0, eos = pad 1).
    """
    fields = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, layer_norm_eps=1e-5,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    fields.update(overrides)
    return CLIPTextConfig(**fields)


def tiny_text_encoder(vocab_size: int = 1000, **overrides) -> CLIPTextModel:
    """A random-weight ``CLIPTextModel`` from :func:`tiny_clip_text_config` (seeded, so deterministic).

    ``vocab_size`` must be at least the tokenizer's length (``len(tokenizer)``).
    """
    torch.manual_seed(0)
    return CLIPTextModel(tiny_clip_text_config(vocab_size, **overrides)).eval()


def tiny_unet(in_channels: int = 4, cross_attention_dim: int = 32, sample_size: int = TINY_LATENT_SIZE,
              **overrides) -> UNet2DConditionModel:
    """A random-weight 2-level ``UNet2DConditionModel`` (32, 64 channels, cross-attention in the low level).

    Args:
        in_channels: latent channels in (4 for SD; more for image-concatenating variants). ``out_channels``
            stays 4 unless overridden.
        cross_attention_dim: width of the text (or image) embeddings it attends to.
        sample_size: the latent side length.
        **overrides: any other ``UNet2DConditionModel`` argument (e.g. ``class_embed_type``).
    """
    fields = dict(
        sample_size=sample_size, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4), norm_num_groups=16,
    )
    fields.update(overrides)
    torch.manual_seed(0)
    return UNet2DConditionModel(**fields)


def tiny_vae(sample_size: int = TINY_IMAGE_SIZE, **overrides) -> AutoencoderKL:
    """A random-weight 2-level ``AutoencoderKL`` (32, 64 channels, 4 latent channels, scale factor 2)."""
    fields = dict(
        sample_size=sample_size, in_channels=3, out_channels=3, latent_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1, norm_num_groups=16,
    )
    fields.update(overrides)
    torch.manual_seed(0)
    return AutoencoderKL(**fields)


def tiny_scheduler(kind: str = "pndm") -> PNDMScheduler | DDIMScheduler:
    """SD v1's noise schedule (scaled-linear betas 0.00085 → 0.012) with a PNDM or DDIM sampler."""
    args = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    if kind == "pndm":
        return PNDMScheduler(skip_prk_steps=True, steps_offset=1, **args)
    if kind == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **args)
    raise ValueError(f"scheduler kind must be 'pndm' or 'ddim', but got {kind!r}.")


def build_tiny_sd_pipeline(path: str | Path, *, scheduler: str = "pndm") -> Path:
    """Saves a complete tiny ``StableDiffusionPipeline`` (no safety checker) to ``path`` and returns it.

    The folder loads with ``StableDiffusionPipeline.from_pretrained(path)`` or
    ``DiffusionPipeline.from_pretrained(path)``, offline; its default output is 16 × 16 RGB.
    """
    path = Path(path)
    tokenizer = tiny_clip_tokenizer(path / "tokenizer")
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(vocab_size=len(tokenizer)), tokenizer=tokenizer,
        unet=tiny_unet(), scheduler=tiny_scheduler(scheduler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path
