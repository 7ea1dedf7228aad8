"""The runtime CLIs and API under misuse: one line naming the problem and the fix, a distinct exit code, no traceback."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from runtime import segment
from runtime.cli import EXIT_ENGINES, EXIT_INPUT, EXIT_OUTPUT, EXIT_SYSTEM
from runtime.fewshot import FewShotSegmenter
from runtime.manifest import EngineDirError


@pytest.fixture(scope="module")
def files(tmp_path_factory, built):
    """A support pair, a query, a saved bank and a copy of the engines to break, on disk."""
    _, engines = built
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(4)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 16:48] = 255
    Image.fromarray(image).save(root / "s.png")
    Image.fromarray(mask).save(root / "m.png")
    Image.fromarray(image[:48]).save(root / "q.png")
    segmenter = FewShotSegmenter.from_dir(engines, backend="onnxruntime")
    segmenter.set_support(image, mask)
    segmenter.save_support(root / "bank.npz")
    return root


def _run(engines, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "runtime.segment", "--engines", str(engines), "--backend", "onnxruntime", *extra]
    return subprocess.run(command, capture_output=True, text=True)


def _one_line_error(run: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, run.stderr
    for word in words:
        assert word in lines[0], lines[0]


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size (its IHDR) and holds no pixels: Pillow's bomb check fires on opening."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _damaged_engines(built, tmp_path, edit) -> str:
    _, engines = built
    copy = tmp_path / "engines"
    shutil.copytree(engines, copy)
    data = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(edit(data)))
    return str(copy)


def test_cli_reports_bad_inputs_in_one_line(built, files, tmp_path):
    _, engines = built
    q = ["--query", str(files / "q.png"), "--out", str(tmp_path / "out")]
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "cut.npz").write_bytes((files / "bank.npz").read_bytes()[:300])
    np.save(tmp_path / "array.npy", np.zeros(3))
    for bank, word in [("empty.npz", "not a readable support bank"), ("cut.npz", "not a readable support bank"),
                       ("array.npy", "one array")]:  # fmt: skip
        _one_line_error(_run(engines, "--load-support", str(tmp_path / bank), *q), EXIT_INPUT, word)
    _one_line_error(_run(engines, "--load-support", str(tmp_path / "none.npz"), *q), EXIT_INPUT, "no such")
    pair = ["--support", str(files / "s.png"), "--support-mask", str(files / "m.png")]
    _one_line_error(_run(engines, *pair, *q, "--threshold", "1.5"), EXIT_INPUT, "threshold must be in [0.0, 1.0)")
    (tmp_path / "bomb.png").write_bytes(_png_header(40000, 40000))  # 1.6 Gpixel claimed in 57 bytes
    _one_line_error(_run(engines, *pair, "--query", str(tmp_path / "bomb.png"), "--out", str(tmp_path / "o")),
                    EXIT_INPUT, "decompression-bomb")  # fmt: skip


@pytest.mark.parametrize(
    "edit, word",
    [
        (lambda d: {**d, "readout": {"mode": d["readout"]["mode"]}}, "'threshold' is a required property"),
        (lambda d: {**d, "graphs": list(d["graphs"].values())}, "$.graphs"),
        (lambda d: [d], "not of type 'object'"),
        (lambda d: {**d, "layers": d["layers"][:-1]}, "layers do not match its graphs' bank tensors"),
    ],
)
def test_cli_reports_malformed_manifests_in_one_line(built, files, tmp_path, edit, word):
    engines = _damaged_engines(built, tmp_path, edit)
    run = _run(
        engines,
        "--load-support",
        str(files / "bank.npz"),
        "--query",
        str(files / "q.png"),
        "--out",
        str(tmp_path / "o"),
    )
    _one_line_error(run, EXIT_ENGINES, word, "rebuild")


def test_cli_reports_unwritable_outputs_before_any_work(built, files, tmp_path):
    _, engines = built
    (tmp_path / "a_file").write_text("mine")
    load = ["--load-support", str(files / "bank.npz"), "--query", str(files / "q.png")]
    _one_line_error(_run(engines, *load, "--out", str(tmp_path / "a_file")), EXIT_OUTPUT, "is a file, not a folder")
    _one_line_error(_run(engines, *load, "--out", str(tmp_path / "a_file" / "sub")), EXIT_OUTPUT, "a_file is a file")
    out = ["--out", str(tmp_path / "out")]
    _one_line_error(_run(engines, *load, *out, "--save-support", str(tmp_path)), EXIT_OUTPUT, "is a folder")
    _one_line_error(_run(engines, *load, *out, "--save-support", str(files / "bank.npz")), EXIT_OUTPUT, "--overwrite")
    assert (tmp_path / "a_file").read_text() == "mine"


def test_a_refused_write_is_a_system_error_with_its_path(built, files, tmp_path, monkeypatch, capsys):
    _, engines = built

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out" / "q_mask.png"))

    monkeypatch.setattr(segment, "save_png", refuse)
    argv = ["--engines", str(engines), "--backend", "onnxruntime", "--load-support", str(files / "bank.npz")]
    with pytest.raises(SystemExit) as exit_info:
        segment.main(argv + ["--query", str(files / "q.png"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == EXIT_SYSTEM
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert line.startswith("error: ") and "q_mask.png: Permission denied; check the permissions" in line


def test_api_misuse_gets_clear_messages(built, files, tmp_path):
    _, engines = built
    segmenter = FewShotSegmenter.from_dir(engines, backend="onnxruntime")
    image, mask = str(files / "s.png"), str(files / "m.png")
    with pytest.raises(ValueError, match="2 support images but 1 masks"):
        segmenter.set_support([image, image], mask)
    segmenter.set_support(Image.open(image), Image.open(mask))  # one PIL image is one shot
    segmenter.set_support((p for p in [image]), (p for p in [mask]))  # any iterable of shots
    assert segmenter.shots == 1
    with pytest.raises(ValueError, match="segment_batch takes a list"):
        segmenter.segment_batch(str(files / "q.png"))
    with pytest.raises(ValueError, match="threshold must be a number"):
        segmenter.segment(image, threshold="abc")
    for threads in ("2", -1, 0, 1.5):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            FewShotSegmenter.from_dir(engines, backend="onnxruntime", threads=threads)
    data = dict(np.load(files / "bank.npz"))
    del data["model_hash"]
    np.savez(tmp_path / "nohash.npz", **data)
    with pytest.raises(ValueError, match="records no model_hash"):
        segmenter.load_support(tmp_path / "nohash.npz")
    with pytest.raises(OSError, match="is a folder"):
        segmenter.save_support(tmp_path, overwrite=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError, match="is a file, not a folder"):
        segmenter.save_support(tmp_path / "f" / "bank.npz")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_corrupt_graph_loaded_without_verification_is_named(built, tmp_path, backend):
    _, engines = built
    copy = tmp_path / "engines"
    shutil.copytree(engines, copy)
    (copy / "query_segmenter.onnx").write_bytes(b"\x08\x07 not a protobuf graph")
    with pytest.raises(EngineDirError, match="query_segmenter.onnx cannot be loaded"):
        FewShotSegmenter.from_dir(copy, verify=False, backend=backend)
