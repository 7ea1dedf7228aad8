"""Writes the shipped example images: DiffewS supports and queries, and a SLiMe part data set.

    python scripts/make_examples.py --out examples/diffews --slime-out examples/slime

For each of two held-out categories (never seen by the shipped DiffewS model in training), two
support images with their masks and three queries with their ground-truth masks, 128 x 128 PNGs
from the synthetic world (seed 0). Ids are drawn from a fixed seed, not picked by the model's
results. Files: CATEGORY/support_{1,2}.png, CATEGORY/support_{1,2}_mask.png (white = foreground),
CATEGORY/query_{1,2,3}.png and CATEGORY/query_{1,2,3}_truth.png.

SLiMe: the part data of the first category (red plain mushroom: background, cap, stem) in
SLiMe's folder layout (`segdata.layouts.write_part_folder`): train_1, train_10, 2 val and 4 test
images with their .npy part labels; the shipped embedding `examples/slime/mushroom.safetensors`
is optimised on train_1 (see the README).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdata.categories import CATEGORIES  # noqa: E402
from segdata.layouts import write_part_folder  # noqa: E402
from segdata.synthetic import SyntheticFewShot, SyntheticParts  # noqa: E402
from segdata.world import SyntheticWorld  # noqa: E402

EXAMPLE_CATEGORIES = (4, 16)  # held out in fold 0 (categories f, f + 4, ...)
PART_CATEGORY = 0  # red plain mushroom


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("examples/diffews"))
    parser.add_argument("--slime-out", type=Path, default=Path("examples/slime"))
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    world = SyntheticWorld(resolution=128, seed=0)
    folder = args.slime_out / CATEGORIES[PART_CATEGORY].name.replace(" ", "_")
    splits = {"train": 10, "val": 2, "test": 4}
    write_part_folder(folder, *(SyntheticParts(world, PART_CATEGORY, s, n) for s, n in splits.items()))
    print(f"wrote {folder}")
    source = SyntheticFewShot(SyntheticWorld(resolution=128, seed=0), fold=0, split="val", size=400)
    rng = np.random.default_rng(args.seed)
    for category in EXAMPLE_CATEGORIES:
        name = CATEGORIES[category].name.replace(" ", "_")
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        ids = rng.choice(source.images_of(category), 5, replace=False)
        for role, index, image_id in [("support", i + 1, ids[i]) for i in range(2)] + [
            ("query", i + 1, ids[2 + i]) for i in range(3)
        ]:
            image, labels = source.load(int(image_id))
            mask = (labels == category + 1).astype(np.uint8) * 255
            Image.fromarray(image).save(folder / f"{role}_{index}.png")
            suffix = "mask" if role == "support" else "truth"
            Image.fromarray(mask).save(folder / f"{role}_{index}_{suffix}.png")
        print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
