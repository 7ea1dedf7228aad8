"""build_engine + runtime on a tiny-random DiffewS model: graphs, manifest, agreement with PyTorch, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from export import build_engine
from export.diffews_graphs import diffews_graph_specs
from export.parity import ParityError, check_parity, compare_outputs
from modeling.diffews_folder import load_diffews, model_hash
from runtime.fewshot import FewShotSegmenter
from runtime.manifest import Manifest
from runtime.sections import QUERY_SEGMENTER, SUPPORT_ENCODER, FusedLayer, Readout
from runtime.sessions import OnnxRuntimeGraph
from segdata.metrics import mask_iou
from segdata.samples import resize_array


def test_engine_directory_is_complete_and_checked(built):
    folder, engines = built
    manifest = Manifest.read(engines)
    assert manifest.kind == "diffews" and manifest.model["hash"] == model_hash(folder)
    assert (
        manifest.diffews.max_shots == 3 and manifest.resolution == 64
    )  # as the `built` fixture (conftest) builds them
    assert manifest.diffews.readout == Readout("relative", 0.25, "vae")
    assert set(manifest.graphs) == {SUPPORT_ENCODER, QUERY_SEGMENTER}
    assert len(manifest.diffews.layers) == len(load_diffews(folder).fusion.layer_names)
    assert manifest.parity and all(row["passed"] for row in manifest.parity)
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest.producer)
    for entry in manifest.graphs.values():
        model = onnx.load(str(engines / entry.file))
        assert model.ir_version == 10  # readable by onnxruntime 1.20+
        assert [i.name for i in model.graph.input] == entry.spec.input_names
    assert (engines / "parity.md").is_file() and len(manifest.parity) == 2  # the worst row of each graph
    assert not list(engines.parent.glob("*partial*"))


def test_runtime_agrees_with_the_pytorch_pipeline(built, episodes):
    folder, engines = built
    model = load_diffews(folder)
    segmenter = FewShotSegmenter.from_dir(engines, backend="onnxruntime")  # the graphs' own numerics
    sizes = [(64, 64), (96, 64), (64, 80), (50, 70)]
    foreground = []
    for episode, size in zip(episodes, sizes):
        supports = [resize_array(im, *size) for im in episode.support_images]
        masks = [resize_array(m.astype(np.uint8), *size, nearest=True) for m in episode.support_masks]
        query = resize_array(episode.query_image, size[1], size[0])  # a query of another size than its supports
        for shots in (1, 2):
            segmenter.set_support(supports[:shots], masks[:shots])
            got = segmenter.segment(query)
            assert got.shape == query.shape[:2] and got.dtype == np.uint8
            bank = model.bank_from_pixels(np.stack(supports[:shots])[None], np.stack(masks[:shots])[None])
            want = model.segment(query[None], bank)[0]
            assert mask_iou(got > 0, want) >= 0.99
            foreground.append(want.mean())
    assert 0.0 < np.mean(foreground) < 1.0  # the comparison is not between two trivial masks


def test_n_shot_bank_is_the_concatenation_of_single_shots(built, episodes):
    _, engines = built
    segmenter = FewShotSegmenter.from_dir(engines)
    ep = episodes[0]
    segmenter.set_support(ep.support_images, [m.astype(np.uint8) for m in ep.support_masks])
    assert segmenter.shots == 2
    singles = [segmenter.encode_shot(im, m.astype(np.uint8)) for im, m in zip(ep.support_images, ep.support_masks)]
    for name, tensor in segmenter.bank.items():
        np.testing.assert_array_equal(tensor, np.concatenate([s[name] for s in singles]))


def test_threshold_override_is_monotonic(built, episodes):
    _, engines = built
    segmenter = FewShotSegmenter.from_dir(engines)
    ep = episodes[1]
    segmenter.set_support(ep.support_images[0], ep.support_masks[0].astype(np.uint8))
    low, default, high = (segmenter.segment(ep.query_image, t) for t in (0.05, None, 0.9))
    assert low.sum() >= default.sum() >= high.sum()
    assert low.sum() > high.sum()


def test_saved_support_sets_round_trip_and_are_tied_to_their_model(built, episodes, tmp_path):
    _, engines = built
    segmenter = FewShotSegmenter.from_dir(engines)
    ep = episodes[2]
    segmenter.set_support(ep.support_images, [m.astype(np.uint8) for m in ep.support_masks])
    path = segmenter.save_support(tmp_path / "cats.npz")
    with pytest.raises(FileExistsError, match="overwrite"):
        segmenter.save_support(path)
    other = FewShotSegmenter.from_dir(engines)
    other.load_support(path)
    np.testing.assert_array_equal(other.segment(ep.query_image), segmenter.segment(ep.query_image))

    data = dict(np.load(path))
    data["model_hash"] = np.array("0" * 64)
    np.savez(tmp_path / "foreign.npz", **data)
    with pytest.raises(ValueError, match="computed by another model"):
        other.load_support(tmp_path / "foreign.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable support bank"):
        other.load_support(tmp_path / "junk.npz")


def test_bad_inputs_get_clear_errors(built, episodes):
    _, engines = built
    segmenter = FewShotSegmenter.from_dir(engines)
    ep = episodes[0]
    image, mask = ep.support_images[0], ep.support_masks[0].astype(np.uint8)
    with pytest.raises(RuntimeError, match="call set_support"):
        segmenter.segment(ep.query_image)
    with pytest.raises(ValueError, match="mask is empty"):
        segmenter.set_support(image, np.zeros_like(mask))
    with pytest.raises(ValueError, match="mask is 32x64 but the image is 64x64"):
        segmenter.set_support(image, mask[:, :32])
    with pytest.raises(ValueError, match="these engines take 1 to 3"):
        segmenter.set_support([image] * 4, [mask] * 4)
    with pytest.raises(ValueError, match="2 support images but 1 masks"):
        segmenter.set_support([image, image], [mask])
    segmenter.set_support(image, mask)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        segmenter.segment(ep.query_image.astype(np.float32))
    with pytest.raises(ValueError, match="the image is 64x16; these engines take sides from 32 to 512"):
        segmenter.segment(np.zeros((16, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="not in this onnxruntime build"):
        FewShotSegmenter.from_dir(engines, providers=["TensorrtExecutionProvider"])


def test_build_refuses_to_overwrite_or_to_start_without_a_model(built, tmp_path):
    folder, engines = built
    before = (engines / "manifest.json").read_text()
    with pytest.raises(SystemExit, match="--overwrite"):
        build_engine.main(["--model", str(folder), "--out", str(engines)])
    assert (engines / "manifest.json").read_text() == before
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="only engine directories are replaced"):
        build_engine.main(["--model", str(folder), "--out", str(mine), "--overwrite"])
    assert (mine / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit, match="is not a DiffewS model folder"):
        build_engine.main(["--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "engines")])
    assert not (tmp_path / "engines").exists()


def test_parity_failures_are_reported():
    spec = diffews_graph_specs([FusedLayer("a", 4, 2)], 1)[SUPPORT_ENCODER]
    want = [np.ones((1, 4, 2), np.float32)] * 2
    rows = compare_outputs(spec, "s", [w + 1e-6 for w in want], want)
    check_parity(rows)
    assert rows[0].metric == "rel_l2" and rows[0].value == pytest.approx(1e-6, rel=0.1)  # 1 + 1e-6 rounds in float32
    rows = compare_outputs(spec, "s", [want[0], want[1] + 0.5], want)
    with pytest.raises(ParityError, match=r"support_encoder.value_00 on s: rel_l2 0.5 vs 0.001"):
        check_parity(rows)
    rows = compare_outputs(spec, "s", [want[0], want[1][:, :2]], want)
    with pytest.raises(ParityError, match="shape"):
        check_parity(rows)


def test_runtime_runs_without_torch(built, episodes, tmp_path):
    _, engines = built
    ep = episodes[0]
    Image.fromarray(ep.support_images[0]).save(tmp_path / "s.png")
    Image.fromarray(ep.support_masks[0].astype(np.uint8) * 255).save(tmp_path / "s_mask.png")
    Image.fromarray(ep.query_image).save(tmp_path / "q.png")
    script = (
        "import sys\n"
        "from runtime.segment import main\n"
        f"main(['--engines', {str(engines)!r}, '--support', {str(tmp_path / 's.png')!r}, "
        f"'--support-mask', {str(tmp_path / 's_mask.png')!r}, '--query', {str(tmp_path / 'q.png')!r}, "
        f"'--out', {str(tmp_path / 'out')!r}, '--save-support', {str(tmp_path / 'bank.npz')!r}])\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'modeling', 'train') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    mask = np.asarray(Image.open(tmp_path / "out" / "q_mask.png"))
    segmenter = FewShotSegmenter.from_dir(engines)
    segmenter.load_support(tmp_path / "bank.npz")
    np.testing.assert_array_equal(mask > 0, segmenter.segment(ep.query_image) > 0)
    assert np.asarray(Image.open(tmp_path / "out" / "q_overlay.png")).shape == ep.query_image.shape
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.segment",
            "--engines",
            str(engines),
            "--load-support",
            str(tmp_path / "bank.npz"),
        ]
        + ["--query", str(tmp_path / "q.png"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert again.returncode != 0 and "--overwrite" in again.stderr
    summary = json.dumps(Manifest.read(engines).to_json())
    assert "query_segmenter" in summary


def test_fp16_and_fused_engines_pass_their_parity(built, episodes, tmp_path):
    folder, _ = built
    engines = tmp_path / "fp16"
    build_engine.main(["--model", str(folder), "--out", str(engines), "--precision", "fp16", "--optimize"])
    manifest = Manifest.read(engines)
    assert manifest.precision == "fp16" and all(row["passed"] for row in manifest.parity)
    graph = onnx.load(str(engines / manifest.graph(QUERY_SEGMENTER).file))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
    assert any(n.domain == "com.microsoft" for n in graph.graph.node)  # ONNX Runtime's fused operators
    assert [i.type.tensor_type.elem_type for i in graph.graph.input][:2] == [
        onnx.TensorProto.UINT8,
        onnx.TensorProto.FLOAT,
    ]
    segmenter = FewShotSegmenter.from_dir(engines)
    ep = episodes[3]
    segmenter.set_support(ep.support_images[0], ep.support_masks[0].astype(np.uint8))
    assert segmenter.segment(ep.query_image).shape == ep.query_image.shape[:2]


def test_dynamic_shapes_follow_the_descriptor():
    from export.onnx_export import dynamic_shapes

    layers = [FusedLayer("a", 4, 2), FusedLayer("b", 1, 4)]
    query = diffews_graph_specs(layers, max_shots=3)[QUERY_SEGMENTER]
    image, threshold, bank = dynamic_shapes(query, packed_tail=4)
    assert threshold is None and set(image) == {0, 1} and len(bank) == 4
    assert bank[0][0] is bank[3][0]  # one "shots" Dim shared by every bank input
    single = diffews_graph_specs(layers, max_shots=1)[QUERY_SEGMENTER]
    assert dynamic_shapes(single, packed_tail=4)[2] == ({},) * 4  # a range of one size is static


def test_the_support_graph_resizes_the_mask_by_its_own_shape(built):
    """A host that feeds a mask of another width than its image gets the bank of that mask, not a misread one.

    Doubling every column of a 64-wide mask and resizing it (nearest) to the 64-pixel model
    resolution gives the original mask back, so both feeds must give the same bank.
    """
    _, engines = built
    manifest = Manifest.read(engines)
    entry = manifest.graph(SUPPORT_ENCODER)
    session = OnnxRuntimeGraph(engines / entry.file, entry.spec)
    rng = np.random.default_rng(7)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 5:25] = 1
    want = session.run({"image": image, "mask": mask})
    wide = session.run({"image": image, "mask": np.repeat(mask, 2, axis=1)})
    for a, b in zip(want, wide):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    shifted = session.run({"image": image, "mask": np.roll(mask, 20, axis=1)})
    assert not np.allclose(shifted[0], want[0], atol=1e-4)  # the bank does depend on where the mask is


def test_attention_in_query_blocks_exports_the_same_segmenter(built, episodes, tmp_path):
    """--attention-block 24 splits the tiny model's 64-query self-attention into three blocks: more
    softmaxes in the graph, the manifest says so, parity passes and the masks stay the PyTorch pipeline's."""
    folder, unblocked = built
    engines = tmp_path / "blocked"
    common = ["--model", str(folder), "--max-shots", "2", "--parity-episodes", "1", "--selection", "all"]
    with pytest.raises(SystemExit, match="query block must be 0"):
        build_engine.main([*common, "--out", str(engines), "--attention-block", "-1"])
    assert not engines.exists()
    build_engine.main([*common, "--out", str(engines), "--attention-block", "24"])
    manifest = Manifest.read(engines)
    assert manifest.diffews.attention_block == 24 and Manifest.read(unblocked).diffews.attention_block == 256
    assert all(row["passed"] for row in manifest.parity)

    def softmaxes(directory):
        graph = onnx.load(str(directory / Manifest.read(directory).graph(QUERY_SEGMENTER).file))
        return sum(node.op_type == "Softmax" for node in graph.graph.node)

    assert softmaxes(engines) > softmaxes(unblocked)  # 256 is more than the tiny model's 64 queries: unblocked
    model = load_diffews(folder)  # PyTorch's own attention (sdpa), unblocked
    segmenter = FewShotSegmenter.from_dir(engines, backend="onnxruntime")
    for episode in episodes[:2]:
        for shots in (1, 2):
            supports, masks = (
                episode.support_images[:shots],
                [m.astype(np.uint8) for m in episode.support_masks[:shots]],
            )
            segmenter.set_support(supports, masks)
            bank = model.bank_from_pixels(np.stack(supports)[None], np.stack(masks)[None])
            want = model.segment(episode.query_image[None], bank)[0]
            assert mask_iou(segmenter.segment(episode.query_image) > 0, want) >= 0.99
