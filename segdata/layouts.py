"""On-disk layouts of real few-shot and part data sets: writers for the synthetic world, readers for all.

One reader per layout serves real data and the synthetic world alike:

* **COCO-20i, HSNet / Matcher layout** (`Coco20iFolder`)::

      ROOT/train2014/NAME.jpg, ROOT/val2014/NAME.jpg          images
      ROOT/annotations/train2014/NAME.png, .../val2014/...    class id + 1 per pixel, 0 background
      ROOT/splits/{trn,val}/fold{0..3}.pkl                    {class id: ["train2014/NAME.jpg", ...]}

  Every pickle is keyed by every class id; classes outside the split have empty lists.

* **Class folders, FSS-1000 layout** (`ClassFolders`)::

      ROOT/CLASS_NAME/ID.jpg and ROOT/CLASS_NAME/ID.png       binary mask, any non-zero is foreground

* **Part folders, SLiMe layout** (`PartFolder`)::

      ROOT/{train_1,train_10,val,test}/NAME.png and NAME.npy  (H, W) integer part labels
      ROOT/class_names.txt                                    one name per label, background first

Split pickles are read with an unpickler that accepts only dicts, lists, strings and integers,
so a malicious file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segdata.categories import CATEGORIES, NUM_CATEGORIES
from segdata.folds import NUM_FOLDS, held_out_categories
from segdata.synthetic import SyntheticFewShot, SyntheticParts

PART_SPLIT_DIRS = ("train_1", "train_10", "val", "test")


class LayoutError(ValueError):
    """A data folder does not follow the layout it was opened as."""


# ------------------------------------------------------------------------------------------ helpers
def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8; a clear error for a missing or unreadable file."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise LayoutError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise LayoutError(f"cannot read image {path}: {err}; is it a valid PNG or JPEG?") from None


def read_labels(path: Path) -> np.ndarray:
    """(H, W) integer label map from a PNG (palette or greyscale) or a .npy file."""
    try:
        if path.suffix == ".npy":
            labels = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as img:
                labels = np.asarray(img)
    except FileNotFoundError:
        raise LayoutError(f"mask {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise LayoutError(f"cannot read mask {path}: {err}") from None
    if labels.ndim != 2:
        raise LayoutError(f"mask {path} has shape {labels.shape}; expected a single-channel (H, W) label map")
    return labels


def _check_pair(image: np.ndarray, labels: np.ndarray, where: str) -> None:
    if image.shape[:2] != labels.shape:
        raise LayoutError(f"{where}: image is {image.shape[:2]} but its mask is {labels.shape}; they must match")


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise LayoutError(f"split file refers to {module}.{name}; only dicts, lists, strings and ints are allowed")


def _load_split_pickle(path: Path) -> dict[int, list[str]]:
    try:
        data = _SafeUnpickler(io.BytesIO(path.read_bytes())).load()
    except FileNotFoundError:
        raise LayoutError(
            f"split file {path} does not exist; expected ROOT/splits/{{trn,val}}/fold{{0..3}}.pkl"
        ) from None
    except (pickle.UnpicklingError, EOFError) as err:
        raise LayoutError(f"split file {path} is not a valid pickle: {err}") from None
    if not isinstance(data, dict):
        raise LayoutError(f"split file {path} holds a {type(data).__name__}; expected {{class id: [image names]}}")
    return {int(k): list(v) for k, v in data.items()}


# ---------------------------------------------------------------------------------------- COCO-20i
def write_coco20i(root: Path, trn: Sequence[SyntheticFewShot], val: SyntheticFewShot) -> None:
    """Writes synthetic pools in the HSNet / Matcher COCO-20i layout.

    Args:
        trn: one "trn" pool per fold (fold f's pickle lists only fold f's pool, whose scenes
            hold no held-out category).
        val: the shared "val" pool; each fold's val pickle lists the images of its held-out classes.
    """
    for pool in trn:
        classwise = _write_pool(root, pool, "train2014")
        _dump_split(root / "splits" / "trn" / f"fold{pool.fold}.pkl", classwise)
    val_classwise = _write_pool(root, val, "val2014", all_categories=True)
    for fold in range(NUM_FOLDS):
        held_out = set(held_out_categories(fold))
        _dump_split(
            root / "splits" / "val" / f"fold{fold}.pkl",
            {c: names if c in held_out else [] for c, names in val_classwise.items()},
        )


def _write_pool(root: Path, pool: SyntheticFewShot, folder: str, all_categories: bool = False) -> dict[int, list[str]]:
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
    classwise: dict[int, list[str]] = {c: [] for c in range(NUM_CATEGORIES)}
    for i in range(pool.size):
        scene = pool.scene(i)
        name = f"{folder}/{pool.image_name(i)}.jpg"
        Image.fromarray(scene.image).save(root / name, quality=95)
        Image.fromarray(scene.category_mask).save(root / "annotations" / name.replace(".jpg", ".png"))
        for c in sorted(
            scene.categories_present if all_categories else set(scene.categories_present) & set(pool.categories)
        ):
            classwise[c].append(name)
    return classwise


def _dump_split(path: Path, classwise: dict[int, list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(classwise, protocol=4))


class Coco20iFolder:
    """Reads a COCO-20i data set in the HSNet / Matcher layout (a `FewShotSource`).

    Args:
        root: the data set root (holding splits/, annotations/ and the image folders).
        fold: 0..3.
        split: "trn" or "val".
        num_classes: classes of the data set (80 for COCO); fold f holds out {f + 4v}.
    """

    def __init__(self, root: str | Path, fold: int, split: str = "val", num_classes: int = 80):
        if split not in ("trn", "val"):
            raise ValueError(f"split must be 'trn' or 'val', got {split!r}")
        self.root = Path(root)
        self.fold, self.split = fold, split
        held_out = list(range(fold, num_classes, NUM_FOLDS))
        self.categories = held_out if split == "val" else [c for c in range(num_classes) if c not in held_out]
        classwise = _load_split_pickle(self.root / "splits" / split / f"fold{fold}.pkl")
        self.names = sorted({n for c in self.categories for n in classwise.get(c, [])})
        index = {n: i for i, n in enumerate(self.names)}
        self._class_images = {c: [index[n] for n in classwise.get(c, [])] for c in self.categories}

    def images_of(self, category: int) -> list[int]:
        return self._class_images.get(category, [])

    def load(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        name = self.names[image_id]
        image = read_rgb(self.root / name)
        labels = read_labels(self.root / "annotations" / (name[: name.rindex(".")] + ".png"))
        _check_pair(image, labels, name)
        return image, labels


# ------------------------------------------------------------------------------------ class folders
def write_class_folders(root: Path, pool: SyntheticFewShot, per_class: int) -> None:
    """Writes up to `per_class` images of each of the pool's classes in the FSS-1000 layout."""
    for c in pool.categories:
        folder = root / CATEGORIES[c].slug
        folder.mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(pool.images_of(c)[:per_class]):
            scene = pool.scene(i)
            Image.fromarray(scene.image).save(folder / f"{n + 1}.jpg", quality=95)
            Image.fromarray(scene.binary_mask(c) * 255).save(folder / f"{n + 1}.png")


class ClassFolders:
    """Reads ROOT/CLASS/ID.{jpg,png} pairs (FSS-1000 layout); class ids follow sorted folder names."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise LayoutError(f"{self.root} is not a folder; expected ROOT/CLASS_NAME/ID.jpg with ID.png masks")
        self.class_names = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.categories = list(range(len(self.class_names)))
        self.items: list[tuple[int, Path, Path]] = []
        self._class_images: dict[int, list[int]] = {}
        for c, name in enumerate(self.class_names):
            for mask in sorted((self.root / name).glob("*.png")):
                image = next((mask.with_suffix(s) for s in (".jpg", ".jpeg") if mask.with_suffix(s).exists()), None)
                if image is None:
                    continue  # a PNG without a JPEG beside it is a mask-less image or a stray file
                self._class_images.setdefault(c, []).append(len(self.items))
                self.items.append((c, image, mask))
        if not self.items:
            raise LayoutError(f"no ID.jpg + ID.png pairs under {self.root}/CLASS_NAME/")

    def images_of(self, category: int) -> list[int]:
        return self._class_images.get(category, [])

    def load(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        category, image_path, mask_path = self.items[image_id]
        image, mask = read_rgb(image_path), read_labels(mask_path)
        _check_pair(image, mask, str(image_path))
        return image, np.where(mask > 0, category + 1, 0).astype(np.int32)


# ------------------------------------------------------------------------------------- part folders
def write_part_folder(root: Path, train: SyntheticParts, val: SyntheticParts, test: SyntheticParts) -> None:
    """Writes one category's part data in SLiMe's layout (train_1 and train_10 from `train`)."""
    splits = {"train_1": (train, 1), "train_10": (train, 10), "val": (val, len(val)), "test": (test, len(test))}
    for split, (data, count) in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(min(count, len(data))):
            image, parts = data[i]
            Image.fromarray(image).save(root / split / f"{i:04d}.png")
            np.save(root / split / f"{i:04d}.npy", parts)
    (root / "class_names.txt").write_text("\n".join(train.class_names) + "\n")


class PartFolder:
    """Reads one split of a part data set in SLiMe's layout: items are (image, labels) pairs."""

    def __init__(self, root: str | Path, split: str = "train_1"):
        self.root = Path(root)
        if split not in PART_SPLIT_DIRS:
            raise ValueError(f"split must be one of {PART_SPLIT_DIRS}, got {split!r}")
        names_file = self.root / "class_names.txt"
        if not names_file.exists():
            raise LayoutError(f"{names_file} is missing; it lists the part names, background first, one per line")
        self.class_names = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
        self.images = sorted((self.root / split).glob("*.png"))
        if not self.images:
            raise LayoutError(f"no NAME.png images in {self.root / split}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        path = self.images[index]
        image, labels = read_rgb(path), read_labels(path.with_suffix(".npy"))
        _check_pair(image, labels, str(path))
        if labels.max() >= len(self.class_names):
            raise LayoutError(
                f"{path.with_suffix('.npy')} has label {labels.max()} but class_names.txt names only "
                f"{len(self.class_names)} classes"
            )
        return image, labels
