"""Writes over existing files and folders: a failure (disk full, an exception mid-write) keeps the old one intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from runtime import files
from runtime.fewshot import FewShotSegmenter
from runtime.files import OutputError, OutputExistsError, replacing_file, replacing_folder, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text(tmp_path / "notes.json", '{"good": true}')
    with pytest.raises(OSError, match="No space"), replacing_file(path, overwrite=True) as tmp:
        tmp.write_text('{"goo')  # half written ...
        raise OSError(28, "No space left on device")  # ... when the disk fills
    assert json.loads(path.read_text()) == {"good": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.json"]
    write_text(path, '{"good": 2}')
    assert json.loads(path.read_text()) == {"good": 2}


def test_nothing_is_overwritten_unless_asked_and_bad_targets_are_named(tmp_path):
    path = write_text(tmp_path / "a.txt", "mine")
    with pytest.raises(OutputExistsError, match="overwrite"), replacing_file(path):
        pass
    assert path.read_text() == "mine"
    with pytest.raises(OutputError, match="is a folder, not a file"), replacing_file(tmp_path, overwrite=True):
        pass
    with pytest.raises(OutputError, match="is a file, not a folder"), replacing_file(path / "b.txt"):
        pass
    with pytest.raises(OutputError, match="is a file, not a folder"), replacing_folder(path, overwrite=True):
        pass


def test_new_files_get_the_umask_s_permissions_and_replaced_ones_keep_theirs(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)  # read back: os.umask can only be read by setting it
    path = write_text(tmp_path / "a.txt", "x")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert files._umask() == umask
    path.chmod(0o600)
    write_text(path, "y")
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text() == "y"


def test_a_failed_folder_build_keeps_the_old_folder(tmp_path):
    target = tmp_path / "engines"
    with replacing_folder(target) as work:
        (work / "manifest.json").write_text("old")
    with pytest.raises(RuntimeError, match="parity"), replacing_folder(target, overwrite=True) as work:
        (work / "manifest.json").write_text("new, half done")
        raise RuntimeError("parity failed")
    assert (target / "manifest.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["engines"]
    with replacing_folder(target, overwrite=True) as work:
        (work / "manifest.json").write_text("new")
    assert (target / "manifest.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["engines"]


def _one_shot_segmenter(engines):
    """(segmenter with a one-shot support set, its 64 x 64 image, its mask) on ONNX Runtime."""
    rng = np.random.default_rng(0)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 20:50] = 1
    segmenter = FewShotSegmenter.from_dir(engines, backend="onnxruntime")
    segmenter.set_support(image, mask)
    return segmenter, image, mask


def test_save_support_overwrite_that_fails_keeps_the_old_bank(built, tmp_path, monkeypatch):
    _, engines = built
    segmenter, image, mask = _one_shot_segmenter(engines)
    path = segmenter.save_support(tmp_path / "bank.npz")
    want = segmenter.segment(image)
    segmenter.set_support([image, image[::-1].copy()], [mask, mask[::-1].copy()])

    def savez_until_the_disk_fills(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", savez_until_the_disk_fills)
    with pytest.raises(OSError, match="No space"):
        segmenter.save_support(path, overwrite=True)
    monkeypatch.undo()
    other = FewShotSegmenter.from_dir(engines, backend="onnxruntime")
    other.load_support(path)  # still the old, whole bank
    assert other.shots == 1
    np.testing.assert_array_equal(other.segment(image), want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.npz"]


def test_cli_save_support_under_a_file_size_limit_keeps_the_old_bank(built, tmp_path):
    """A real failed write: RLIMIT_FSIZE makes the kernel refuse the new bank part way (EFBIG)."""
    _, engines = built
    segmenter, image, mask = _one_shot_segmenter(engines)
    bank = segmenter.save_support(tmp_path / "bank.npz")
    before = bank.read_bytes()

    for name, array in {
        "s0.png": image,
        "m0.png": mask * 255,
        "s1.png": image[::-1],
        "m1.png": mask[::-1] * 255,
    }.items():
        Image.fromarray(np.ascontiguousarray(array)).save(tmp_path / name)
    limit = len(before) + 4096  # the two-shot bank is about twice as large
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from runtime import segment
        sys.exit(segment.main(sys.argv[1:]))
    """)
    args = ["--engines", str(engines), "--backend", "onnxruntime", "--out", str(tmp_path / "out")]
    args += ["--support", str(tmp_path / "s0.png"), "--support-mask", str(tmp_path / "m0.png")]
    args += ["--support", str(tmp_path / "s1.png"), "--support-mask", str(tmp_path / "m1.png")]
    args += ["--query", str(tmp_path / "s0.png"), "--save-support", str(bank), "--overwrite"]
    run = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=os.getcwd())
    assert run.returncode == 7, run.stderr
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1 and "File too large" in run.stderr
    assert bank.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
