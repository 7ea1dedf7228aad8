"""The demo: the synthetic world, a few-shot episode and the embedded synth base model at work.

    bash scripts/run.sh demo          # sets up .venv, then runs this
    python scripts/demo.py --out demo_out

Writes demo_out/world.png (scenes with their category masks), demo_out/episode.png (a 1-shot
episode of held-out categories), demo_out/parts.png (part masks for SLiMe),
demo_out/reconstructions.png and demo_out/samples.png (text-to-image samples of the base model),
and prints the base model's VAE figures on held-out scenes with the time each step took.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdata.categories import CATEGORIES  # noqa: E402
from segdata.episodes import EpisodeSampler  # noqa: E402
from segdata.synthetic import SyntheticFewShot, SyntheticParts  # noqa: E402
from segdata.visualize import colourize_labels, labelled_grid, overlay_mask  # noqa: E402
from segdata.world import SyntheticWorld  # noqa: E402


def _save(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)
    print(f"  wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--scenes", type=int, default=64, help="held-out scenes for the VAE figures")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(resolution=128, seed=0)

    t = time.perf_counter()
    print("1. the synthetic world")
    scenes = [world.scene((99, 0, i)) for i in range(8)]
    tiles = [overlay_mask(s.image, s.instance_mask > 0) for s in scenes]
    _save(
        args.out / "world.png",
        labelled_grid(
            [s.image for s in scenes] + tiles, [s.caption.replace("a ", "") for s in scenes] + ["objects"] * 8, 8
        ),
    )
    val = SyntheticFewShot(world, fold=0, split="val", size=200)
    episode = EpisodeSampler(val, shots=1).sample(np.random.default_rng(0))
    name = CATEGORIES[episode.category].name
    _save(
        args.out / "episode.png",
        labelled_grid(
            [
                overlay_mask(episode.support_images[0], episode.support_masks[0], (40, 200, 40)),
                episode.query_image,
                overlay_mask(episode.query_image, episode.query_mask),
            ],
            [f"support: {name}", "query", "query ground truth"],
            3,
        ),
    )
    parts = SyntheticParts(world, category=3, split="train", size=4)
    _save(
        args.out / "parts.png",
        labelled_grid(
            [im for im, _ in (parts[i] for i in range(4))]
            + [colourize_labels(lb) for _, lb in (parts[i] for i in range(4))],
            ["car"] * 4 + [", ".join(parts.class_names[1:])] * 4,
            4,
        ),
    )
    print(f"   {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    print("2. the embedded synth base model")
    import torch

    from modeling.imaging import decode, encode_mean, images_to_tensor, tensor_to_images
    from modeling.presets import SYNTH_BASE_DIR, build_model
    from train.base_eval import reconstruction_figures, sample_grid

    components = build_model("synth")
    figures = reconstruction_figures(components.vae, world, args.scenes)
    print(
        f"   VAE on {figures['scenes']} held-out scenes: PSNR {figures['scene_psnr_db']} dB; "
        f"mask round trip IoU mean {figures['mask_iou_mean']} (min {figures['mask_iou_min']}) over {figures['masks']} masks"
    )
    images = np.stack([s.image for s in scenes])
    with torch.no_grad():
        recon = tensor_to_images(decode(components.vae, encode_mean(components.vae, images_to_tensor(images))))
    _save(
        args.out / "reconstructions.png",
        labelled_grid(list(images) + list(recon), ["scene"] * 8 + ["VAE round trip"] * 8, 8),
    )
    print(f"   {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    print("3. text-to-image samples of the base (diffusers StableDiffusionPipeline, 30 DDIM steps)")
    hits = sample_grid(SYNTH_BASE_DIR, world, args.out / "samples.png")
    print(
        f"   {hits['named_colour_hit_rate']:.0%} of samples show the prompt's colour (chance {hits['chance']:.0%});"
        f" wrote {args.out / 'samples.png'}"
    )
    print(f"   {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
