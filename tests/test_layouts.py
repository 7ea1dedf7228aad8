"""On-disk layouts: the synthetic world written out reads back through the real-data readers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from segdata.categories import CATEGORIES, NUM_CATEGORIES
from segdata.episodes import EpisodeSampler
from segdata.folds import NUM_FOLDS, held_out_categories
from segdata.layouts import (
    ClassFolders,
    Coco20iFolder,
    LayoutError,
    PartFolder,
    write_class_folders,
    write_coco20i,
    write_part_folder,
)
from segdata.synthetic import SyntheticFewShot, SyntheticParts


@pytest.fixture(scope="module")
def coco_root(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("coco20i")
    trn = [SyntheticFewShot(world, fold=f, split="trn", size=12) for f in range(NUM_FOLDS)]
    val = SyntheticFewShot(world, fold=0, split="val", size=40)
    write_coco20i(root, trn, val)
    return root, trn, val


def test_coco_layout_has_hsnet_files(coco_root):
    root, trn, _ = coco_root
    for split in ("trn", "val"):
        for f in range(NUM_FOLDS):
            classwise = pickle.loads((root / "splits" / split / f"fold{f}.pkl").read_bytes())
            assert sorted(classwise) == list(range(NUM_CATEGORIES))
            held_out = set(held_out_categories(f))
            for c, names in classwise.items():
                if (split == "trn") == (c in held_out):
                    assert names == []
                for name in names:
                    assert (root / name).exists() and name.endswith(".jpg")
                    assert (root / "annotations" / name.replace(".jpg", ".png")).exists()
    name = trn[0].image_name(0)
    labels = np.asarray(Image.open(root / "annotations" / "train2014" / f"{name}.png"))
    np.testing.assert_array_equal(labels, trn[0].scene(0).category_mask)  # class id + 1


def test_coco_reader_gives_the_written_episodes(coco_root):
    root, _, val = coco_root
    reader = Coco20iFolder(root, fold=0, split="val", num_classes=NUM_CATEGORIES)
    assert reader.categories == list(held_out_categories(0))
    for c in reader.categories:
        assert len(reader.images_of(c)) == len(val.images_of(c))
    ep = EpisodeSampler(reader, 1).sample(np.random.default_rng(0))
    name = reader.names[ep.query_id]
    index = int(name.rsplit("_", 1)[1].split(".")[0])
    np.testing.assert_array_equal(ep.query_mask, val.scene(index).binary_mask(ep.category))
    jpeg_error = np.abs(ep.query_image.astype(int) - val.scene(index).image.astype(int)).mean()
    assert jpeg_error < 6  # JPEG quality 95


def test_coco_reader_refuses_a_pickle_that_would_run_code(coco_root, tmp_path):
    root, _, _ = coco_root
    (tmp_path / "splits" / "val").mkdir(parents=True)
    (tmp_path / "splits" / "val" / "fold0.pkl").write_bytes(pickle.dumps({0: [np.float64(1.0)]}))
    with pytest.raises(LayoutError, match="only dicts, lists, strings and ints"):
        Coco20iFolder(tmp_path, fold=0, split="val", num_classes=NUM_CATEGORIES)
    with pytest.raises(LayoutError, match="does not exist"):
        Coco20iFolder(tmp_path, fold=1, split="val", num_classes=NUM_CATEGORIES)


def test_unreadable_image_gives_a_clear_error(coco_root, tmp_path):
    root, _, _ = coco_root
    reader = Coco20iFolder(root, fold=0, split="val", num_classes=NUM_CATEGORIES)
    broken = root / reader.names[0]
    saved = broken.read_bytes()
    try:
        broken.write_bytes(b"not a jpeg")
        with pytest.raises(LayoutError, match="cannot read image"):
            reader.load(0)
    finally:
        broken.write_bytes(saved)


def test_class_folders_round_trip(world, tmp_path):
    pool = SyntheticFewShot(world, fold=2, split="val", size=60)
    write_class_folders(tmp_path, pool, per_class=3)
    reader = ClassFolders(tmp_path)
    assert reader.class_names == sorted(CATEGORIES[c].slug for c in pool.categories)
    ep = EpisodeSampler(reader, 2).sample(np.random.default_rng(1))
    assert ep.query_mask.any() and len(ep.support_masks) == 2
    category = pool.categories[[CATEGORIES[c].slug for c in pool.categories].index(reader.class_names[ep.category])]
    first = pool.images_of(category)[0]
    _, labels = reader.load(reader.images_of(ep.category)[0])
    np.testing.assert_array_equal(labels > 0, pool.scene(first).binary_mask(category) > 0)


def test_class_folders_refuse_an_empty_root(tmp_path):
    (tmp_path / "cls").mkdir()
    with pytest.raises(LayoutError, match="no ID.jpg"):
        ClassFolders(tmp_path)


def test_part_folder_round_trip(world, tmp_path):
    data = {s: SyntheticParts(world, category=3, split=s, size=n) for s, n in (("train", 10), ("val", 2), ("test", 4))}
    write_part_folder(tmp_path, data["train"], data["val"], data["test"])
    for split, expected in (("train_1", 1), ("train_10", 10), ("val", 2), ("test", 4)):
        assert len(PartFolder(tmp_path, split)) == expected
    reader = PartFolder(tmp_path, "train_10")
    assert reader.class_names == ["background", "body", "window", "wheel"]
    image, labels = reader[4]
    np.testing.assert_array_equal(image, data["train"][4][0])
    np.testing.assert_array_equal(labels, data["train"][4][1])


def test_part_folder_checks_labels_against_class_names(world, tmp_path):
    data = SyntheticParts(world, category=3, split="train", size=1)
    write_part_folder(tmp_path, data, data, data)
    (tmp_path / "class_names.txt").write_text("background\nbody\n")
    with pytest.raises(LayoutError, match="names only 2 classes"):
        PartFolder(tmp_path, "train_1")[0]
