"""train.import_slime on embedding_<i>.pth files written the way the authors' SLiMe code writes them."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from modeling.checkpoint_files import CheckpointError
from modeling.presets import build_model
from modeling.slime import prompt_for
from modeling.slime_embedding import load_slime, weights_hash
from modeling.text_embeddings import empty_text_embedding, text_embedding
from runtime.files import OutputExistsError
from train import import_slime
from train import slime as train_slime
from train.import_slime import import_slime as run_import

NAMES = ["background", "head", "body", "tail"]


def save_the_authors_way(folder, rows):
    """Their on_validation_epoch_end: torch.save of each optimised (1, 1, D) tensor, requires_grad and all."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        torch.save(row.reshape(1, 1, -1).clone().requires_grad_(True), folder / f"embedding_{i}.pth")
    return folder


@pytest.fixture(scope="module")
def base():
    return build_model("tiny-random")


@pytest.fixture(scope="module")
def authors_rows(base):
    """K-1 optimised rows: the CLIP outputs of "part" x K at positions 1..K-1, moved by optimisation."""
    text = text_embedding(base.text_encoder, base.tokenizer, prompt_for(len(NAMES)))
    return text[0, 1 : len(NAMES)] + torch.randn(
        len(NAMES) - 1, text.shape[-1], generator=torch.Generator().manual_seed(0)
    )


@pytest.fixture()
def checkpoint_dir(tmp_path, authors_rows):
    return save_the_authors_way(tmp_path / "checkpoints" / "version_0", authors_rows)


def test_the_imported_context_is_the_one_the_authors_test_with(base, authors_rows, checkpoint_dir, tmp_path):
    out = run_import(checkpoint_dir, NAMES, tmp_path / "emb.safetensors", base="tiny-random")
    model, embedding = load_slime(out)
    # Their on_test_start, written out: [text[:, :1], loaded embeddings..., text[:, 1 + (K-1):]]
    text = text_embedding(base.text_encoder, base.tokenizer, prompt_for(len(NAMES)))
    want = torch.cat([text[:, :1], authors_rows[None].float(), text[:, len(NAMES) :]], dim=1)
    torch.testing.assert_close(embedding.context, want, rtol=0, atol=0)
    torch.testing.assert_close(
        embedding.uncond, empty_text_embedding(base.text_encoder, base.tokenizer), rtol=0, atol=0
    )
    assert embedding.class_names == NAMES and embedding.base == "tiny-random"
    assert embedding.base_hash == weights_hash(base.unet, base.vae)
    assert embedding.settings.bgr  # the authors' code since 2023-09-28 feeds BGR
    assert embedding.layers == model.layers and len(embedding.layers.cross) == 3
    imported = embedding.info["imported"]
    files = sorted(checkpoint_dir.glob("*.pth"))
    assert imported["channel_order"] == "bgr"
    assert imported["sha256"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    scores = model.segment_crops((np.random.default_rng(0).random((1, 64, 64, 3)) * 255).astype(np.uint8))
    assert scores.shape == (1, len(NAMES), 64, 64) and np.isfinite(scores).all()


def test_rgb_order_and_the_text_prompt_are_recorded(base, checkpoint_dir, tmp_path):
    prompt = "head body tail part"
    out = run_import(
        checkpoint_dir, NAMES, tmp_path / "e.safetensors", base="tiny-random", channel_order="rgb", text_prompt=prompt
    )
    _, embedding = load_slime(out)
    text = text_embedding(base.text_encoder, base.tokenizer, prompt)
    assert not embedding.settings.bgr and embedding.info["imported"]["text_prompt"] == prompt
    torch.testing.assert_close(embedding.context[:, len(NAMES) :], text[:, len(NAMES) :], rtol=0, atol=0)


@pytest.mark.parametrize("classes", [NAMES[:3], NAMES + ["wing"]])
def test_the_file_count_must_match_the_classes(checkpoint_dir, classes, tmp_path):
    with pytest.raises(CheckpointError, match=rf"names {len(classes)} classes .* 3 embedding files, i.e. 3 parts"):
        run_import(checkpoint_dir, classes, tmp_path / "e.safetensors", base="tiny-random")
    assert not (tmp_path / "e.safetensors").exists()


@pytest.mark.parametrize(
    "classes, message",
    [
        ("background,,body", "has an empty class name"),
        ("background", "at least one part"),
        ("a,b,a", "a named more than once"),
    ],
)
def test_the_class_list_is_checked_as_train_slime_checks_it(checkpoint_dir, tmp_path, classes, message, capsys):
    out = str(tmp_path / "e.safetensors")
    commands = {
        import_slime.main: ["--embeddings", str(checkpoint_dir), "--classes", classes, "--out", out],
        train_slime.main: ["--images", "a.png", "--masks", "a.png", "--classes", classes, "--out", out],
    }
    for main, args in commands.items():
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_gaps_strays_and_misshapen_files_get_clear_errors(checkpoint_dir, tmp_path):
    out = tmp_path / "e.safetensors"
    (checkpoint_dir / "optimizer.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"not embedding_<i>.pth \(optimizer.pth\)"):
        run_import(checkpoint_dir, NAMES, out, base="tiny-random")
    (checkpoint_dir / "optimizer.pth").unlink()
    os.replace(checkpoint_dir / "embedding_1.pth", checkpoint_dir / "embedding_7.pth")
    with pytest.raises(CheckpointError, match=r"no embedding_1.pth"):
        run_import(checkpoint_dir, NAMES, out, base="tiny-random")
    torch.save(torch.zeros(1, 1, 1024), checkpoint_dir / "embedding_1.pth")  # an SD-width row on the 32-wide base
    (checkpoint_dir / "embedding_7.pth").unlink()
    with pytest.raises(
        CheckpointError, match=r"embedding_1.pth is a \(1, 1, 1024\) tensor, but the base's text encoder is 32 wide"
    ):
        run_import(checkpoint_dir, NAMES, out, base="tiny-random")
    torch.save({"embedding": torch.zeros(1, 1, 32)}, checkpoint_dir / "embedding_1.pth")
    with pytest.raises(CheckpointError, match=r"embedding_1.pth holds a dict"):
        run_import(checkpoint_dir, NAMES, out, base="tiny-random")
    torch.save(torch.full((1, 1, 32), float("nan")), checkpoint_dir / "embedding_1.pth")
    with pytest.raises(CheckpointError, match=r"embedding_1.pth holds NaN or infinite values"):
        run_import(checkpoint_dir, NAMES, out, base="tiny-random")
    torch.save(torch.zeros(1, 1, 32), checkpoint_dir / "embedding_01.pth")  # not a name f"embedding_{i}.pth" gives
    with pytest.raises(CheckpointError, match=r"not embedding_<i>.pth \(embedding_01.pth\)"):
        run_import(checkpoint_dir, NAMES, out, base="tiny-random")
    with pytest.raises(CheckpointError, match=r"holds no embedding_<i>.pth"):
        run_import(tmp_path, NAMES, out, base="tiny-random")
    assert not out.exists()


def test_a_pickle_that_runs_code_is_refused_before_it_runs(checkpoint_dir, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save(Payload(), checkpoint_dir / "embedding_2.pth")
    with pytest.raises(CheckpointError, match=r"refused to read .*embedding_2.pth: the pickle asks for posix.system"):
        run_import(checkpoint_dir, NAMES, tmp_path / "e.safetensors", base="tiny-random")
    assert not marker.exists() and not (tmp_path / "e.safetensors").exists()


def test_the_cli_refuses_an_existing_out_and_reports_errors_in_one_line(checkpoint_dir, tmp_path, capsys):
    out = tmp_path / "e.safetensors"
    out.write_bytes(b"mine")
    args = [
        "--embeddings",
        str(checkpoint_dir),
        "--classes",
        ",".join(NAMES),
        "--base",
        "tiny-random",
        "--out",
        str(out),
    ]
    with pytest.raises(SystemExit, match=r"error: .*exists.*--overwrite"):
        import_slime.main(args)
    with pytest.raises(OutputExistsError):
        run_import(checkpoint_dir, NAMES, out, base="tiny-random")
    assert out.read_bytes() == b"mine"
    with pytest.raises(SystemExit, match=r"^error: sd21-base: no model folder given"):
        import_slime.main(args[:-4] + ["--out", str(tmp_path / "other.safetensors")])
    assert import_slime.main(args + ["--overwrite", "--channel-order", "rgb"]) == 0
    assert "imported" in capsys.readouterr().out and not load_slime(out)[1].settings.bgr


@pytest.mark.slow
def test_the_three_commands_of_the_recipe_give_the_pytorch_labels(checkpoint_dir, tmp_path):
    """docs/released-models.md: import_slime, build_engine --slime, runtime.parts, each as a command line."""
    from PIL import Image

    from modeling.predictor import TorchPartSegmenter
    from runtime.images import save_png

    path, engines, out = tmp_path / "e.safetensors", tmp_path / "engines", tmp_path / "parts"
    for module, *args in (
        ("train.import_slime", "--embeddings", checkpoint_dir, "--classes", ",".join(NAMES), "--base", "tiny-random",
         "--out", path),
        ("export.build_engine", "--slime", path, "--out", engines, "--parity-images", 1),
    ):  # fmt: skip
        done = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    rng = np.random.default_rng(2)
    images = [save_png((rng.random(shape) * 255).astype(np.uint8), tmp_path / f"im{i}.png", False)
              for i, shape in enumerate(((64, 64, 3), (80, 56, 3)))]  # fmt: skip
    command = [sys.executable, "-m", "runtime.parts", "--engines", engines, "--image", *images, "--out", out]
    done = subprocess.run(list(map(str, command)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = TorchPartSegmenter.from_embedding(path)
    for image in images:
        got = np.asarray(Image.open(out / f"{image.stem}_labels.png"))
        want = reference.segment(np.asarray(Image.open(image)))
        assert got.shape == want.shape and (got == want).mean() >= 0.99
