"""A tiny random-weight ``StableUnCLIPImg2ImgPipeline`` for offline tests.

Shapes follow the dummy components of diffusers' stable-unCLIP img2img tests: a CLIP vision tower whose
projected image embedding (``EMBED_DIM``) is noised and concatenated with a timestep embedding of the same
width, so the UNet's ``class_embed_type="projection"`` takes ``2 × EMBED_DIM`` inputs. The tokenizer, text
encoder and VAE come from :mod:`tiny_sd`; nothing downloads. Images are ``TINY_UNCLIP_IMAGE_SIZE`` (32) pixels
square: UNet sample size 16 × VAE scale factor 2.

Usage::

    from tiny_unclip import build_tiny_unclip_pipeline
    model_dir = build_tiny_unclip_pipeline(tmp_path / "tiny-unclip")
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, StableUnCLIPImg2ImgPipeline
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from tiny_sd import tiny_clip_tokenizer, tiny_scheduler, tiny_text_encoder, tiny_unet, tiny_vae

EMBED_DIM = 32  # CLIP image embedding width (projection_dim); also the text hidden size
TINY_UNCLIP_IMAGE_SIZE = 32


def tiny_image_processor(size: int = TINY_UNCLIP_IMAGE_SIZE) -> CLIPImageProcessor:
    """CLIP preprocessing (resize shortest side, centre crop, normalise) for ``size``-pixel inputs."""
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def tiny_image_encoder(size: int = TINY_UNCLIP_IMAGE_SIZE) -> CLIPVisionModelWithProjection:
    """A 2-layer CLIP vision tower on 4 × 4 patches with a ``EMBED_DIM``-wide projection (seeded)."""
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=EMBED_DIM, projection_dim=EMBED_DIM, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, image_size=size, patch_size=4,
    )
    return CLIPVisionModelWithProjection(config).eval()


def build_tiny_unclip_pipeline(path: str | Path) -> Path:
    """Saves a complete tiny ``StableUnCLIPImg2ImgPipeline`` to ``path`` and returns the folder.

    It loads offline with ``StableUnCLIPImg2ImgPipeline.from_pretrained(path)``; outputs are 32 × 32 RGB.
    """
    path = Path(path)
    tokenizer = tiny_clip_tokenizer(path / "tokenizer")
    torch.manual_seed(0)
    image_normalizer = StableUnCLIPImageNormalizer(embedding_dim=EMBED_DIM)
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=tiny_image_processor(),
        image_encoder=tiny_image_encoder(),
        image_normalizer=image_normalizer.eval(),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(vocab_size=len(tokenizer), hidden_size=EMBED_DIM),
        unet=tiny_unet(
            sample_size=TINY_UNCLIP_IMAGE_SIZE // 2, cross_attention_dim=EMBED_DIM,
            class_embed_type="projection", projection_class_embeddings_input_dim=2 * EMBED_DIM,
        ),
        scheduler=tiny_scheduler("ddim"),
        vae=tiny_vae(sample_size=TINY_UNCLIP_IMAGE_SIZE),
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path
