"""Tiny diffusion pipelines built by the tests themselves: the digit pipeline and Stable Diffusion.

Random weights, small configs, saved with safetensors; nothing is downloaded. The Stable
Diffusion pipeline has a real CLIPTokenizer over a vocabulary this module writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models import diffusion as arch
from models.diffusion_bundle import write_pipeline_bundle
from shared.bundle import write_manifest

WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "handwritten", "digit", "smoke", "test"]


def tiny_digits_pipeline(seed: int = 0, size: int = 8) -> arch.DigitsDiffusionPipeline:
    """An untrained class-conditional pipeline (two UNet levels of 8 and 16 channels)."""
    torch.manual_seed(seed)
    unet = arch.build_unet(arch.unet_config(size, block_out_channels=(8, 16), norm_num_groups=4))
    return arch.build_pipeline(unet.eval(), "squaredcos_cap_v2", "epsilon")


def write_digits_bundle(directory: Path, name: str = "generate", seed: int = 0) -> Path:
    """A verified generate bundle: the tiny digit pipeline, smoke arrays and a manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    write_pipeline_bundle(
        directory,
        tiny_digits_pipeline(seed),
        name=name,
        generation={"guidance_scale": 2.0, "scheduler": "dpmsolver++", "steps": 25},
        source={"model": f"{name}-torch", "version": "1", "run_id": "test"},
        metrics={},
    )
    return directory


def seed_cache(cache_dir: Path, name: str = "generate", version: str = "1") -> Path:
    """Place a verified digits bundle in a model cache as if downloaded (alias production)."""
    bundle = write_digits_bundle(cache_dir / name / version, name=name)
    (cache_dir / name / "aliases.json").write_text(json.dumps({"production": version}))
    return bundle


def write_clip_tokenizer(directory: Path) -> None:
    """vocab.json + merges.txt of a word-level CLIP BPE vocabulary (no merges needed)."""
    from transformers import CLIPTokenizer

    letters = sorted({ch for word in WORDS for ch in word})
    vocab = ["<|startoftext|>", "<|endoftext|>", "!", *letters, *(f"{c}</w>" for c in letters)]
    merges = []
    for word in WORDS:  # merge each word left to right into one "word</w>" token
        pieces = [*word[:-1], f"{word[-1]}</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            merged = pieces[0] + pieces[1]
            vocab.append(merged)
            pieces = [merged, *pieces[2:]]
    vocab = list(dict.fromkeys(vocab))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n"
    )
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    tokenizer.model_max_length = 16
    tokenizer.save_pretrained(directory)


def tiny_safety_checker(flag_all: bool) -> tuple[Any, Any]:
    """diffusers' StableDiffusionSafetyChecker over a tiny CLIP vision tower, and its image
    processor. Its concept thresholds make the verdict certain: an image is flagged when a
    cosine similarity exceeds its threshold, so -2 flags every image and +2 none."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    threshold = -2.0 if flag_all else 2.0
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    processor = CLIPImageProcessor(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
    )
    return checker, processor


def tiny_stable_diffusion(directory: Path, seed: int = 0, safety: str | None = None) -> Path:
    """Build, save (safetensors) and return a tiny StableDiffusionPipeline directory; with
    `safety` ("flag-all" or "flag-none") it carries a tiny safety checker of that verdict."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    write_clip_tokenizer(directory / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(directory / "tokenizer")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    scheduler = PNDMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        skip_prk_steps=True,
        steps_offset=1,
    )
    checker, processor = (None, None)
    if safety is not None:
        checker, processor = tiny_safety_checker(
            flag_all={"flag-all": True, "flag-none": False}[safety]
        )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=checker,
        feature_extractor=processor,
        requires_safety_checker=safety is not None,
    )
    pipeline.save_pretrained(directory, safe_serialization=True)
    return directory


def write_sd_bundle(directory: Path, name: str = "generate-sd") -> Path:
    """The tiny Stable Diffusion pipeline plus a checksummed manifest: a registrable bundle."""
    tiny_stable_diffusion(directory)
    write_manifest(
        directory,
        {
            "task": "generate",
            "name": name,
            "default_variant": "torch",
            "variants": {
                "torch": {
                    "file": "unet/diffusion_pytorch_model.safetensors",
                    "format": "diffusers-safetensors",
                }
            },
            "pipeline": {"class": "StableDiffusionPipeline", "kind": "text-to-image"},
            "source": {"model": "tiny-sd", "version": "test", "run_id": "test"},
        },
    )
    return directory
