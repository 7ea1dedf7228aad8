"""SLiMe export and the torch-free part runtime, against PyTorch on tiny-random."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from export import build_engine
from modeling.predictor import TorchPartSegmenter
from modeling.slime_embedding import load_slime
from runtime import parts as parts_cli
from runtime.cli import EXIT_OUTPUT
from runtime.fewshot import FewShotSegmenter
from runtime.manifest import EngineDirError, Manifest
from runtime.parts import PartSegmenter
from runtime.patches import Patching, segment_parts
from segdata.visualize import colourize_labels

NAMES = ["background", "head", "body", "tail"]  # the conftest slime_engines fixture's classes


def _images():
    rng = np.random.default_rng(1)
    return [(rng.random(shape) * 255).astype(np.uint8) for shape in ((64, 64, 3), (80, 120, 3), (50, 40, 3))]


def test_manifest_of_a_slime_directory(slime_engines):
    _, engines = slime_engines
    manifest = Manifest.read(engines)
    assert manifest.kind == "slime" and manifest.resolution == 64
    assert list(manifest.parts.class_names) == NAMES
    assert manifest.parts.patching == Patching(64, 2, 48)
    assert manifest.parts.settings["token_threshold"] == 0.0  # tiny-random's preset value
    written = json.loads((engines / "manifest.json").read_text())["parts"]
    assert written["patching"] == {"output_size": 64, "per_side": 2, "patch_size": 48}
    assert list(manifest.graphs) == ["part_segmenter"] and all(r["passed"] for r in manifest.parity)
    assert manifest.graphs["part_segmenter"].spec.outputs[0].shape == (4, "height", "width")


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_every_backend_gives_the_pytorch_labels(slime_engines, backend):
    """The same calls on PyTorch (`modeling.predictor`) and on the engines, against the model run by hand."""
    path, engines = slime_engines
    model, _ = load_slime(path)
    if backend == "torch":
        segmenter = TorchPartSegmenter.from_embedding(path, per_side=2, patch_size=48)
    else:
        segmenter = PartSegmenter.from_dir(engines, backend=backend)
    patching = segmenter.patching
    assert patching.origins() == [(0, 0), (0, 16), (16, 0), (16, 16)]
    for image in _images():
        want = segment_parts(image, lambda crop: model.segment_crops(crop[None])[0], patching)
        got = segmenter.segment(image)
        assert got.shape == image.shape[:2] and got.dtype == np.uint8
        assert (got == want).mean() > 0.999  # float rounding may flip a tie-close pixel, no more
        assert len(np.unique(got)) > 1  # the perturbed embeddings do separate classes
    whole = PartSegmenter.from_dir(engines, per_side=1, patch_size=64)
    assert whole.patching.origins() == [(0, 0)]


def test_openvino_labels_equal_onnxruntime_s(slime_engines):
    _, engines = slime_engines
    reference = PartSegmenter.from_dir(engines, backend="onnxruntime")
    segmenter = PartSegmenter.from_dir(engines, backend="openvino", threads=1)
    assert segmenter.backend == "openvino"
    for image in _images():
        assert (segmenter.segment(image) == reference.segment(image)).mean() > 0.999


def test_wrong_directories_and_bad_files_are_refused(slime_engines, built, tmp_path):
    path, engines = slime_engines
    _, diffews_engines = built
    with pytest.raises(EngineDirError, match="not a SLiMe part segmenter"):
        PartSegmenter.from_dir(diffews_engines)
    with pytest.raises(ValueError, match="not DiffewS"):
        FewShotSegmenter.from_dir(engines)
    with pytest.raises(ValueError, match="patch size must be between"):
        PartSegmenter.from_dir(engines, patch_size=100)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(SystemExit, match="not a readable safetensors"):
        build_engine.main(["--slime", str(tmp_path / "junk.safetensors"), "--out", str(tmp_path / "e")])
    assert not (tmp_path / "e").exists()


def test_parts_cli_writes_labels_and_overlays(slime_engines, tmp_path, capsys):
    _, engines = slime_engines
    image_path = tmp_path / "thing.png"
    Image.fromarray(_images()[1]).save(image_path)
    out = tmp_path / "out"
    assert parts_cli.main(["--engines", str(engines), "--image", str(image_path), "--out", str(out)]) == 0
    labels = np.asarray(Image.open(out / "thing_labels.png"))
    assert labels.shape == (80, 120) and labels.max() < len(NAMES)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "thing_parts.png")), colourize_labels(labels))
    with pytest.raises(SystemExit) as exit_info:
        parts_cli.main(["--engines", str(engines), "--image", str(image_path), "--out", str(out)])
    assert exit_info.value.code == EXIT_OUTPUT and "pass --overwrite" in capsys.readouterr().err
    script = (  # the same CLI in a fresh interpreter imports no torch and no training code
        "import sys\n"
        "from runtime.parts import main\n"
        f"main(['--engines', {str(engines)!r}, '--image', {str(image_path)!r}, '--out', {str(tmp_path / 'o2')!r}])\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'modeling', 'train') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o2" / "thing_labels.png")), labels)


def test_patch_layouts():
    assert Patching(512, 2, 400).origins() == [(0, 0), (0, 112), (112, 0), (112, 112)]  # CelebA's 4 x 400 px
    assert Patching(512, 3, 256).origins()[:3] == [(0, 0), (0, 128), (0, 256)]
    assert Patching(512).origins() == [(0, 0)] and Patching(512).side == 512
    with pytest.raises(ValueError, match="same crop"):
        Patching(512, 2).origins()
    # overlapping crops are averaged: a scorer that says "class = crop index" gives the mean where they overlap
    calls = []

    def scorer(crop):
        calls.append(crop.shape)
        scores = np.zeros((2, *crop.shape[:2]), np.float32)
        scores[1] = len(calls) % 2  # crops 1 and 3 vote class 1, crops 2 and 4 class 0
        scores[0] = 0.5
        return scores

    labels = segment_parts(np.zeros((64, 64, 3), np.uint8), scorer, Patching(64, 2, 48))
    assert calls == [(48, 48, 3)] * 4
    assert labels[0, 0] == 1 and labels[0, 63] == 0  # left column crops voted 1, right column 0
    assert labels[32, 32] == 0  # all four overlap: mean 0.5 ties with class 0, which wins the tie


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "auto"])
def test_threads_sharing_a_part_segmenter_get_the_serial_labels(slime_engines, backend):
    from concurrent.futures import ThreadPoolExecutor

    _, engines = slime_engines
    segmenter = PartSegmenter.from_dir(engines, backend=backend)
    rng = np.random.default_rng(3)
    images = [(rng.random((40 + 4 * i, 64 - 2 * i, 3)) * 255).astype(np.uint8) for i in range(12)]
    serial = [segmenter.segment(im) for im in images]
    assert len({segmenter.segment(images[0]).tobytes() for _ in range(20)}) == 1  # repeatable

    def worker(offset: int) -> list[tuple[int, np.ndarray]]:
        return [((offset + i) % 12, segmenter.segment(images[(offset + i) % 12])) for i in range(12)]

    with ThreadPoolExecutor(8) as pool:
        results = [r for rows in pool.map(worker, range(8)) for r in rows]
    for i, labels in results:
        np.testing.assert_array_equal(labels, serial[i])
