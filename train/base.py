"""Pretrains the `synth` base model on the synthetic world and writes it as a diffusers folder.

    python -m train.base --out runs/synth-base            # about 40 minutes on 2 CPU cores
    python -m train.base --out runs/synth-base            # again: resumes where it stopped

Stages (each resumable from its last checkpoint, skipped once finished):
  1. VAE on scene and mask crops; latent scaling factor from the trained encoder.
  2. Word-level tokenizer, small CLIP text encoder and UNet as a text-conditioned latent
     diffusion model on the captions.
  3. Assembly into `<out>/model` (a StableDiffusionPipeline folder, weights in fp16
     safetensors), evaluation on held-out scenes, a sample grid and a model card.

Copy `<out>/model` to `modeling/pretrained/synth-base` to make it the embedded default.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from modeling import configs
from modeling.tokenizer import build_word_tokenizer
from runtime.files import replacing_folder, write_text
from segdata.world import SyntheticWorld
from train.base_ldm import LdmRecipe, train_ldm
from train.base_vae import VaeRecipe, train_vae


def _timed_stage(run_dir: Path, name: str, fn):
    """Runs a stage, adding its wall time to run_dir/timings.json (summed over resumes)."""
    path = run_dir / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    start = time.time()
    result = fn()
    timings[name] = round(timings.get(name, 0.0) + time.time() - start, 1)
    write_text(path, json.dumps(timings, indent=1))
    return result


def assemble(run_dir: Path, vae, text_encoder, tokenizer, unet) -> Path:
    """Writes the diffusers pipeline folder `run_dir/model` with fp16 weights; returns its path."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(configs.SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = run_dir / "model"
    # fp16 halves the shipped size; loading with torch_dtype=float32 restores fp32 compute.
    with replacing_folder(out, overwrite=True) as work:  # a failed save keeps the previous model whole
        pipe.to(torch.float16).save_pretrained(work, safe_serialization=True)
    pipe.to(torch.float32)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/synth-base"), help="run folder (created or resumed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world and of training")
    parser.add_argument("--vae-steps", type=int, default=VaeRecipe.steps)
    parser.add_argument("--ldm-steps", type=int, default=LdmRecipe.steps)
    parser.add_argument("--pool-size", type=int, default=LdmRecipe.pool_size, help="scenes in the latent pool")
    parser.add_argument("--eval-scenes", type=int, default=200, help="held-out scenes for the figures")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    run_dir: Path = args.out
    run_dir.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(resolution=configs.SYNTH_RESOLUTION, seed=args.seed)
    vae_recipe = VaeRecipe(steps=args.vae_steps)
    ldm_recipe = LdmRecipe(steps=args.ldm_steps, pool_size=args.pool_size)
    write_text(
        run_dir / "recipe.json",
        json.dumps(
            {
                "command": "python -m train.base " + " ".join(sys.argv[1:] if argv is None else argv),
                "seed": args.seed,
                "torch_threads": torch.get_num_threads(),
                "vae": asdict(vae_recipe),
                "ldm": asdict(ldm_recipe),
            },
            indent=1,
        ),
    )

    vae = _timed_stage(run_dir, "vae", lambda: train_vae(world, run_dir, vae_recipe, args.seed))
    tokenizer = build_word_tokenizer()
    text_encoder, unet = _timed_stage(
        run_dir, "ldm", lambda: train_ldm(vae, tokenizer, world, run_dir, ldm_recipe, args.seed)
    )
    model_dir = assemble(run_dir, vae, text_encoder, tokenizer, unet)

    from train.base_eval import evaluate_and_write_card

    _timed_stage(run_dir, "evaluation", lambda: evaluate_and_write_card(run_dir, model_dir, world, args.eval_scenes))
    print(f"done: {model_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
