"""The demo: the synthetic world, a few-shot episode and the embedded synth base model at work.

    bash scripts/run.sh demo          # sets up .venv, then runs this
    python scripts/demo.py --out demo_out

Writes demo_out/world.png (scenes with their category masks), demo_out/episode.png (a 1-shot
episode of held-out categories), demo_out/parts.png (part masks for SLiMe),
demo_out/reconstructions.png and demo_out/samples.png (text-to-image samples of the base model),
and demo_out/diffews.png (the shipped DiffewS model segmenting held-out categories, 1-shot and
5-shot); then builds the engines for the shipped model (demo_out/engines) and segments the shipped
example images (examples/diffews: supports and queries of held-out categories) with the torch-free
runtime into demo_out/runtime/ (masks and overlays); finally builds a SLiMe part segmenter from
the shipped one-shot embedding (examples/slime/mushroom.safetensors) and segments the example
test images into demo_out/parts/ (labels, colourised parts, overlays). Prints the base model's VAE
figures, the masks' IoU, the per-part IoU, the runtime's latency and the time each step took.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "diffews"  # written by scripts/make_examples.py
PART_EXAMPLES = ROOT / "examples" / "slime"
sys.path.insert(0, str(ROOT))

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
    diffews_demo(world, args.out)
    runtime_demo(args.out)
    slime_demo(args.out)
    return 0


def diffews_demo(world: SyntheticWorld, out: Path, episodes: int = 4) -> None:
    """The shipped DiffewS model on held-out categories of its fold: support bank once, then the query.

    The PyTorch model behind the runtime's calls (`modeling.predictor`): set_support, then segment.
    """
    from modeling.diffews_folder import read_config
    from modeling.predictor import TorchFewShotSegmenter
    from modeling.presets import PRETRAINED_DIR
    from segdata.metrics import mask_iou

    print("4. DiffewS (PyTorch) on held-out categories, the shipped model")
    folder = PRETRAINED_DIR / "synth-diffews"
    segmenter = TorchFewShotSegmenter.from_folder(folder)
    val = SyntheticFewShot(world, fold=read_config(folder)["data"]["fold"], split="val", size=400)
    tiles, labels = [], []
    for shots in (1, 5):
        for episode in EpisodeSampler(val, shots).fixed_episodes(episodes, seed=7):
            t = time.perf_counter()
            segmenter.set_support(episode.support_images, episode.support_masks)
            t_bank = time.perf_counter() - t
            t = time.perf_counter()
            pred = segmenter.segment(episode.query_image)
            t_query = time.perf_counter() - t
            iou = mask_iou(pred, episode.query_mask)
            name = CATEGORIES[episode.category].name
            print(
                f"   {shots}-shot {name:<24} IoU {iou:.2f}   support bank {t_bank * 1e3:.0f} ms, query {t_query * 1e3:.0f} ms"
            )
            tiles += [
                overlay_mask(episode.support_images[0], episode.support_masks[0], (40, 200, 40)),
                overlay_mask(episode.query_image, pred),
                overlay_mask(episode.query_image, episode.query_mask, (40, 40, 220)),
            ]
            labels += [f"support 1/{shots}: {name}", f"DiffewS IoU {iou:.2f}", "ground truth"]
    _save(out / "diffews.png", labelled_grid(tiles, labels, 6))


def runtime_demo(out: Path) -> None:
    """Exports the shipped model, then segments the shipped examples with the torch-free runtime CLI."""
    print("5. export (python -m export.build_engine) and the torch-free runtime (python -m runtime.segment)")
    t = time.perf_counter()
    engines = out / "engines"
    build = [sys.executable, "-m", "export.build_engine", "--out", str(engines), "--overwrite"]
    subprocess.run(build, check=True)
    print(f"   engines built in {time.perf_counter() - t:.1f} s")
    from modeling.predictor import TorchFewShotSegmenter
    from runtime.manifest import Manifest
    from segdata.metrics import mask_iou

    manifest = Manifest.read(engines)
    torch_model = TorchFewShotSegmenter.from_folder(
        manifest.model["source"], manifest.diffews.readout.decoder, selection=manifest.diffews.selection
    )
    for folder in sorted(EXAMPLES.iterdir()):
        supports = sorted(folder.glob("support_?.png"))
        queries = sorted(folder.glob("query_?.png"))
        segment = [sys.executable, "-m", "runtime.segment", "--engines", str(engines), "--overwrite"]
        for support in supports:
            segment += ["--support", str(support), "--support-mask", str(support.with_name(support.stem + "_mask.png"))]
        segment += ["--query", *map(str, queries), "--out", str(out / "runtime" / folder.name)]
        print(f"   {folder.name}: {len(supports)} supports, {len(queries)} queries")
        subprocess.run(segment, check=True)
        # The same calls on the PyTorch model, with the read-out the engines were built with.
        torch_model.set_support([str(p) for p in supports], [str(p.with_name(p.stem + "_mask.png")) for p in supports])
        for query in queries:
            pred = np.asarray(Image.open(out / "runtime" / folder.name / f"{query.stem}_mask.png")) > 0
            truth = np.asarray(Image.open(query.with_name(query.stem + "_truth.png"))) > 0
            print(
                f"   {query.name}: IoU with the ground truth {mask_iou(pred, truth):.2f}, "
                f"with the PyTorch model's mask {mask_iou(pred, torch_model.segment(str(query))):.3f}"
            )


def slime_demo(out: Path) -> None:
    """Builds the part segmenter of the shipped SLiMe embedding and segments the example test images."""
    from segdata.layouts import PartFolder
    from segdata.metrics import average, image_part_ious

    print("6. SLiMe: build_engine --slime on the shipped one-shot embedding, then python -m runtime.parts")
    t = time.perf_counter()
    engines = out / "engines-slime"
    embedding = PART_EXAMPLES / "mushroom.safetensors"
    build = [sys.executable, "-m", "export.build_engine", "--slime", str(embedding), "--out", str(engines)]
    subprocess.run(build + ["--overwrite"], check=True)
    print(f"   engines built in {time.perf_counter() - t:.1f} s")
    test = PartFolder(PART_EXAMPLES / "red_plain_mushroom", "test")
    command = [sys.executable, "-m", "runtime.parts", "--engines", str(engines), "--overwrite"]
    subprocess.run(command + ["--image", *map(str, test.images), "--out", str(out / "parts")], check=True)
    for path, (_, truth) in zip(test.images, test):
        labels = np.asarray(Image.open(out / "parts" / f"{path.stem}_labels.png"))
        ious = image_part_ious(labels, truth, len(test.class_names))
        per_part = ", ".join(f"{test.class_names[k]} {v:.2f}" for k, v in ious.items())
        print(f"   {path.name}: mean part IoU {average(ious):.2f} ({per_part})")


if __name__ == "__main__":
    raise SystemExit(main())
