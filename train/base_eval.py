"""Evidence that the synth base is a real model: figures on held-out scenes, samples, a model card.

    python -m train.base_eval --model modeling/pretrained/synth-base     # re-measures the figures

Figures:
  * VAE reconstruction PSNR of held-out scenes (posterior mean, full 128 px images), and how far
    each object's mean colour moves in the round trip;
  * IoU of encode-then-decode of held-out binary category masks (decoded channel mean > 0),
    the round trip DiffewS's mask read-out relies on;
  * text conditioning: DDIM samples of single-object prompts, and how often the colour named in
    the prompt is the dominant saturated colour of the sample (chance is 1 in 8).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from modeling.imaging import decode, encode_mean, images_to_tensor, masks_to_tensor, tensor_to_images, tensor_to_masks
from modeling.presets import load_model_folder
from runtime.files import write_text
from runtime.images import save_png
from segdata.categories import CATEGORIES, COLOURS
from segdata.world import SyntheticWorld

EVAL_SPLIT = 12  # held-out scene keys (EVAL_SPLIT, 0, i): no training stage draws them
SAMPLE_CATEGORIES = (0, 9, 2, 11, 4, 21, 6, 15)  # one per family, several colours
SAMPLES_PER_PROMPT = 4


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def relative_threshold_masks(decoded: torch.Tensor, ratio: float = 0.25) -> np.ndarray:
    """DiffewS's read-out: (B, 3, H, W) in [-1, 1] -> (B, H, W) bool, channel mean > ratio x max in [0, 1]."""
    x = (decoded.float() + 1) / 2
    peak = x.flatten(1).max(dim=1).values[:, None, None]
    return (x.mean(dim=1) > ratio * peak).cpu().numpy()


@torch.no_grad()
def reconstruction_figures(vae, world: SyntheticWorld, n: int) -> dict:
    """VAE round trip on `n` held-out scenes: scene PSNR, and IoU of every present category's mask.

    Mask IoU is reported per mask (mean, min) and class-wise as HSNet
    accumulates it (per category, summed intersection over summed union; then the mean over
    categories), with the decoded mask thresholded at mid-grey and with DiffewS's relative read-out.
    """
    psnrs, ious, colour_errors = [], [], []
    sums: dict[str, dict[int, list[int]]] = {"mid": {}, "relative": {}}
    for start in range(0, n, 32):
        scenes = [world.scene((EVAL_SPLIT, 0, i)) for i in range(start, min(n, start + 32))]
        images = np.stack([s.image for s in scenes])
        recon = tensor_to_images(decode(vae, encode_mean(vae, images_to_tensor(images))))
        psnrs += [psnr(a, b) for a, b in zip(images, recon)]
        for scene, rec in zip(scenes, recon):  # does the object keep its colour?
            for i in range(len(scene.objects)):
                here = scene.instance_mask == i + 1
                if here.sum() >= world.min_visible_pixels:
                    diff = scene.image[here].astype(np.float64).mean(0) - rec[here].astype(np.float64).mean(0)
                    colour_errors.append(np.abs(diff).mean())
        pairs = [(s, c) for s in scenes for c in sorted(s.categories_present)]
        masks = np.stack([s.binary_mask(c) for s, c in pairs])
        decoded = decode(vae, encode_mean(vae, masks_to_tensor(masks)))
        gt = masks.astype(bool)
        for kind, pred in (("mid", tensor_to_masks(decoded)), ("relative", relative_threshold_masks(decoded))):
            inter, union = (pred & gt).sum((1, 2)), (pred | gt).sum((1, 2))
            if kind == "mid":
                ious += list(inter / np.maximum(union, 1))
            for (_, c), i, u in zip(pairs, inter, union):
                acc = sums[kind].setdefault(c, [0, 0])
                acc[0], acc[1] = acc[0] + int(i), acc[1] + int(u)

    def classwise(kind: str) -> float:
        return round(float(np.mean([i / max(u, 1) for i, u in sums[kind].values()])), 4)

    return {
        "scenes": n,
        "scene_psnr_db": round(float(np.mean(psnrs)), 2),
        "object_colour_error": round(float(np.mean(colour_errors)), 1),
        "masks": len(ious),
        "mask_iou_mean": round(float(np.mean(ious)), 4),
        "mask_iou_min": round(float(np.min(ious)), 4),
        "mask_iou_classwise": classwise("mid"),
        "mask_iou_classwise_relative": classwise("relative"),
    }


def dominant_colour(image: np.ndarray) -> str | None:
    """The palette colour nearest to the mean of the image's saturated pixels (None if none)."""
    rgb = image.reshape(-1, 3).astype(np.float32)
    saturation = (rgb.max(1) - rgb.min(1)) / np.maximum(rgb.max(1), 1)
    vivid = rgb[saturation > 0.45]
    if len(vivid) < 20:
        return None
    names = list(COLOURS)
    palette = np.array([COLOURS[c] for c in names], np.float32)
    nearest = np.argmin(((vivid[:, None] - palette[None]) ** 2).sum(-1), axis=1)
    return names[int(np.bincount(nearest, minlength=len(names)).argmax())]


@torch.no_grad()
def sample_grid(model_dir: Path, world: SyntheticWorld, out_png: Path) -> dict:
    """Samples single-object prompts with the diffusers pipeline and saves a labelled grid."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    r = world.resolution
    rows, hits = [], 0
    for k, c in enumerate(SAMPLE_CATEGORIES):
        prompt = f"a {CATEGORIES[c].name}"
        generator = torch.Generator().manual_seed(k)
        images = pipe(
            [prompt] * SAMPLES_PER_PROMPT,
            height=r,
            width=r,
            num_inference_steps=30,
            guidance_scale=5.0,
            generator=generator,
            output_type="np",
        ).images
        images = (images * 255).round().astype(np.uint8)
        hits += sum(dominant_colour(im) == CATEGORIES[c].colour for im in images)
        reference = world.part_scene((EVAL_SPLIT, 1, k), c).image
        row = np.concatenate([reference, np.full((r, 4, 3), 255, np.uint8), *images], axis=1)
        label = Image.new("RGB", (row.shape[1], 14), "white")
        ImageDraw.Draw(label).text((2, 1), f"{prompt}   (left: a real scene of it)", fill="black")
        rows.append(np.concatenate([np.asarray(label), row], axis=0))
    save_png(np.concatenate(rows, axis=0), out_png, overwrite=True)
    total = len(SAMPLE_CATEGORIES) * SAMPLES_PER_PROMPT
    return {"samples": total, "named_colour_hit_rate": round(hits / total, 3), "chance": round(1 / len(COLOURS), 3)}


def _final_losses(run_dir: Path) -> dict:
    out = {}
    for stage in ("vae", "ldm"):
        path = run_dir / "logs" / f"{stage}.jsonl"
        if path.exists():
            records = [json.loads(ln) for ln in path.read_text().splitlines() if ln]
            tail = records[-5:]
            out[stage] = {
                k: round(float(np.mean([r[k] for r in tail])), 5) for k in tail[-1] if k not in ("step", "time_s")
            }
            out[stage]["last_step"] = tail[-1]["step"]
    return out


def _parameter_counts(components) -> dict:
    return {name: sum(p.numel() for p in m.parameters()) for name, m in components.modules().items()}


def evaluate_and_write_card(run_dir: Path, model_dir: Path, world: SyntheticWorld, n_scenes: int) -> dict:
    """Measures the figures on the saved (fp16-stored) model and writes metrics.json and README.md."""
    components = load_model_folder(model_dir, "synth")
    figures = reconstruction_figures(components.vae, world, n_scenes)
    figures.update(sample_grid(model_dir, world, model_dir / "samples.png"))
    recipe = json.loads((run_dir / "recipe.json").read_text())
    timings = json.loads((run_dir / "timings.json").read_text())
    report = {
        "figures": figures,
        "final_losses": _final_losses(run_dir),
        "wall_time_s": timings,
        "recipe": recipe,
        "parameters": _parameter_counts(components),
    }
    write_text(model_dir / "metrics.json", json.dumps(report, indent=1))
    write_text(model_dir / "README.md", model_card(report))
    print(json.dumps(figures, indent=1))
    return report


def model_card(report: dict) -> str:
    f, t, losses, recipe = report["figures"], report["wall_time_s"], report["final_losses"], report["recipe"]
    params = report["parameters"]
    train_minutes = (t.get("vae", 0) + t.get("ldm", 0)) / 60
    return f"""# synth-base: a small latent diffusion model of the synthetic world

The embedded default backbone of this toolkit: the Stable Diffusion 2.1 architecture family
(diffusers `AutoencoderKL`, transformers `CLIPTextModel`, diffusers `UNet2DConditionModel` with
four levels, linear projections, 2 transformer layers per block, 16 self-attention layers)
at toy width, pretrained from scratch on the toolkit's procedural world (`segdata`) at
{recipe["vae"].get("crop", 64)}-px crops (VAE) and 128 x 128 scenes (latent 16 x 16 x 4).
Weights are stored in fp16 safetensors; load them in fp32:

```python
import torch
from modeling.presets import build_model
components = build_model("synth")
# or with diffusers alone:
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("modeling/pretrained/synth-base", torch_dtype=torch.float32)
```

| component | parameters |
| --- | --- |
| VAE | {params["vae"]:,} |
| text encoder | {params["text_encoder"]:,} |
| UNet | {params["unet"]:,} |

Tokenizer: word-level over the world's vocabulary (colours, patterns, families, part names),
[BOS, words, EOS] padded with id 0 to 77 tokens. Scheduler: SD's scaled-linear betas
(0.00085 to 0.012), 1000 steps, epsilon prediction (like SD 2.1-base).

## Training

Command: `{recipe["command"]}` (seed {recipe["seed"]}, {torch_threads_line(report)}).

| stage | steps | batch | lr | final losses (mean of last 5 logged) | wall time |
| --- | --- | --- | --- | --- | --- |
| VAE | {recipe["vae"]["steps"]} | {recipe["vae"]["batch_size"]} | {recipe["vae"]["lr"]} | {_fmt(losses.get("vae", {}))} | {t.get("vae", 0) / 60:.1f} min |
| text encoder + UNet | {recipe["ldm"]["steps"]} | {recipe["ldm"]["batch_size"]} | {recipe["ldm"]["lr"]} | {_fmt(losses.get("ldm", {}))} | {t.get("ldm", 0) / 60:.1f} min |

Total training wall time: {train_minutes:.1f} min.

## Figures (held-out scenes; `python -m train.base_eval --model <this folder>`)

| figure | value |
| --- | --- |
| VAE reconstruction PSNR, {f["scenes"]} scenes | {f["scene_psnr_db"]} dB |
| mean absolute error of an object's mean RGB after the round trip (0-255) | {f["object_colour_error"]} |
| mask encode-decode IoU, class-wise accumulated (HSNet's aggregation), mid-grey threshold | {f["mask_iou_classwise"]} |
| the same with DiffewS's read-out (channel mean > 0.25 x max) | {f["mask_iou_classwise_relative"]} |
| per-mask IoU over {f["masks"]} masks: mean / min | {f["mask_iou_mean"]} / {f["mask_iou_min"]} |
| samples whose dominant colour is the prompt's | {f["named_colour_hit_rate"]:.0%} of {f["samples"]} (chance {f["chance"]:.0%}) |

![samples](samples.png)

Each row: a real scene of the prompted category, then {SAMPLES_PER_PROMPT} DDIM samples
(30 steps, guidance 5) of the prompt.

## Limits

A 128-px toy model trained for well under an hour on two CPU cores, so that every part of the
toolkit runs for real without downloading Stable Diffusion; real SD 2.1 weights plug in through
the `sd21` / `sd21-base` presets. {_conditioning_verdict(f)}
"""


def _conditioning_verdict(f: dict) -> str:
    if f["named_colour_hit_rate"] > 2 * f["chance"]:
        return "Samples are blurry and shapes approximate, but they follow the prompt's colour."
    return (
        "**Its text-to-image samples do not show the named objects yet**: they look like the world's "
        "background clutter, and the prompt's colour is no more frequent than chance. The UNet stage is "
        "undertrained at this budget (its denoising loss is low at high noise but composition is not "
        "learned)." + _colour_verdict(f)
    )


def _colour_verdict(f: dict) -> str:
    if f["object_colour_error"] <= 15:
        return ""
    return (
        " The VAE round-trips masks well, but it has not learned colour yet: reconstructed objects keep "
        "their shape and brightness and lose most of their hue (see the object colour error)."
    )


def torch_threads_line(report: dict) -> str:
    return f"{report['recipe']['torch_threads']} torch threads"


def _fmt(values: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items() if k != "last_step")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("modeling/pretrained/synth-base"))
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="world seed the model was trained with")
    args = parser.parse_args(argv)
    components = load_model_folder(args.model, "synth")
    world = SyntheticWorld(resolution=components.resolution, seed=args.seed)
    figures = reconstruction_figures(components.vae, world, args.scenes)
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
