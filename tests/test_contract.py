"""Graph descriptors and the engine manifest: validation, clear errors, JSON round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from export.diffews_graphs import diffews_graph_specs, diffews_rules
from runtime.contract import GraphSpec
from runtime.manifest import EngineDirError, GraphEntry, Manifest, file_sha256
from runtime.sections import (
    QUERY_SEGMENTER,
    SUPPORT_ENCODER,
    DiffewsSection,
    FusedLayer,
    Readout,
    bank_names,
    check_threshold,
)

LAYERS = [FusedLayer("down.attn1", 64, 8), FusedLayer("up.attn1", 16, 16)]


def specs():
    return diffews_graph_specs(LAYERS, max_shots=3, min_side=32, opt_side=64, max_side=256)


def test_diffews_specs_describe_the_bank_cut():
    s = specs()
    support, query = s[SUPPORT_ENCODER], s[QUERY_SEGMENTER]
    assert support.input_names == ["image", "mask"]
    assert support.output_names == bank_names(LAYERS) == ["key_00", "key_01", "value_00", "value_01"]
    assert query.input_names == ["image", "threshold", *bank_names(LAYERS)]
    assert [o.shape for o in support.outputs] == [(1, 64, 8), (1, 16, 16), (1, 64, 8), (1, 16, 16)]
    bank_in = query.inputs[2]
    assert bank_in.shape == ("shots", 64, 8) and bank_in.max_shape == (3, 64, 8)
    assert query.outputs[0].dtype == "uint8" and query.outputs[0].dynamic_axes == {0: "height", 1: "width"}


def test_feeds_are_checked_with_explanations():
    support = specs()[SUPPORT_ENCODER]
    image, mask = np.zeros((40, 50, 3), np.uint8), np.zeros((40, 50), np.uint8)
    support.check_feed({"image": image, "mask": mask})
    with pytest.raises(ValueError, match="must be uint8"):
        support.check_feed({"image": image.astype(np.float32), "mask": mask})
    with pytest.raises(ValueError, match=r"shape \(height, width, 3\)"):
        support.check_feed({"image": image[..., 0], "mask": mask})
    with pytest.raises(ValueError, match="outside the built range 32..256"):
        support.check_feed({"image": np.zeros((300, 50, 3), np.uint8), "mask": mask})
    with pytest.raises(ValueError, match="missing"):
        support.check_feed({"image": image})
    query = specs()[QUERY_SEGMENTER]
    bank = {n: np.zeros((1, t, c), np.float32) for n, (t, c) in zip(bank_names(LAYERS), [(64, 8), (16, 16)] * 2)}
    feed = {"image": image, "threshold": np.array(0.25, np.float32), **bank}
    query.check_feed(feed)
    with pytest.raises(ValueError, match="another model"):
        query.check_feed({**feed, "key_00": np.zeros((1, 64, 9), np.float32)})
    with pytest.raises(ValueError, match="rebuild the engines with a larger range"):
        query.check_feed({**feed, "key_00": np.zeros((4, 64, 8), np.float32)})


def test_spec_json_round_trip():
    for spec in specs().values():
        assert GraphSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        diffews_graph_specs(LAYERS, 1, precision="int4")


def _manifest(tmp_path):
    (tmp_path / "support_encoder.onnx").write_bytes(b"graph-a")
    (tmp_path / "query_segmenter.onnx").write_bytes(b"graph-b")
    graphs = {
        name: GraphEntry(f"{name}.onnx", file_sha256(tmp_path / f"{name}.onnx"), spec) for name, spec in specs().items()
    }
    return Manifest(
        kind="diffews",
        model={"source": "m", "hash": "abc"},
        resolution=64,
        diffews=DiffewsSection(Readout("relative", 0.25), 3, tuple(LAYERS)),
        precision="fp32",
        graphs=graphs,
        rules=diffews_rules(specs(), 3),
    )


def test_manifest_round_trip_and_errors(tmp_path):
    manifest = _manifest(tmp_path)
    manifest.write(tmp_path)
    again = Manifest.read(tmp_path)
    assert again.to_json() == manifest.to_json()
    assert again.diffews == manifest.diffews and again.diffews.readout.threshold == 0.25
    with pytest.raises(EngineDirError, match="not an engine directory"):
        Manifest.read(tmp_path / "nowhere")
    with pytest.raises(EngineDirError, match="no 'part_segmenter' graph"):
        again.graph("part_segmenter")

    (tmp_path / "query_segmenter.onnx").write_bytes(b"graph-B")  # modified after the build
    with pytest.raises(EngineDirError, match="modified or truncated"):
        Manifest.read(tmp_path)
    Manifest.read(tmp_path, verify=False)
    (tmp_path / "query_segmenter.onnx").unlink()
    with pytest.raises(EngineDirError, match="missing"):
        Manifest.read(tmp_path, verify=False)

    data = manifest.to_json()
    data["schema_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineDirError, match="upgrade the toolkit"):
        Manifest.read(tmp_path)
    data["schema_version"] = 1  # built before the rules, with the mask-width bug in its support encoder
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineDirError, match="rebuild it with python -m export.build_engine"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(EngineDirError, match="not valid JSON"):
        Manifest.read(tmp_path)


def _broken(data: dict, path: str, value=None, delete: bool = False) -> dict:
    """A deep copy of `data` with the key at dotted `path` replaced (or deleted)."""
    data = json.loads(json.dumps(data))
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    if delete:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    "path, value, delete, named",
    [
        ("readout.threshold", None, True, r"\$.readout.*'threshold' is a required property"),
        ("graphs", [], False, r"\$.graphs.*not of type 'object'"),
        ("rules", None, True, "'rules' is a required property"),
        ("rules.shots.max", "five", False, r"\$.rules.shots.max"),
        ("max_shots", 0, False, r"\$.max_shots"),
        ("graphs.support_encoder.file", "../../etc/passwd", False, r"\$.graphs.support_encoder.file"),
        ("graphs.query_segmenter.sha256", "abc", False, r"\$.graphs.query_segmenter.sha256"),
        ("layers", [], False, r"\$.layers"),
    ],
)
def test_malformed_manifests_name_the_bad_key(tmp_path, path, value, delete, named):
    manifest = _manifest(tmp_path)
    manifest.write(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(_broken(manifest.to_json(), path, value, delete)))
    with pytest.raises(EngineDirError, match=named):
        Manifest.read(tmp_path)


def test_a_manifest_that_is_no_object_is_refused(tmp_path):
    for text in ("[1, 2]", '"manifest"', "null"):
        (tmp_path / "manifest.json").write_text(text)
        with pytest.raises(EngineDirError, match="not a valid engine manifest"):
            Manifest.read(tmp_path)


def test_the_rules_tell_a_host_what_to_check():
    rules = diffews_rules(specs(), 3)
    assert rules["sides"] == {"min": 32, "max": 256} and rules["shots"] == {"min": 1, "max": 3}
    assert rules["bank"]["feeds"] == {n: n for n in bank_names(LAYERS)}
    assert rules["support_mask"]["min_foreground_pixels"] == 1
    # The support mask has axes of its own, so the exported graph resizes it by its own shape.
    mask = specs()[SUPPORT_ENCODER].inputs[1]
    assert mask.shape == ("mask_height", "mask_width")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, 1.0, 1.5, "abc", "0.3", None, True])
def test_thresholds_outside_the_range_are_refused(bad):
    with pytest.raises(ValueError, match=r"threshold must be"):
        check_threshold(bad, diffews_rules(specs(), 3)["threshold"])


def test_thresholds_inside_the_range_are_floats():
    rules = diffews_rules(specs(), 3)["threshold"]
    assert check_threshold(0, rules) == 0.0 and check_threshold(np.float32(0.5), rules) == 0.5


def test_graphs_record_their_precision_policy_and_old_manifests_keep_theirs(tmp_path):
    manifest = _manifest(tmp_path)
    manifest.graphs[SUPPORT_ENCODER].reduced_precision = False
    manifest.write(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert [data["graphs"][n]["reduced_precision"] for n in (SUPPORT_ENCODER, QUERY_SEGMENTER)] == [False, True]
    for entry in data["graphs"].values():  # as written before the field existed
        del entry["reduced_precision"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    again = Manifest.read(tmp_path)
    assert not again.graph(SUPPORT_ENCODER).reduced_precision and again.graph(QUERY_SEGMENTER).reduced_precision


def test_profile_text_is_the_tensorrt_shape_syntax():
    spec = specs()[SUPPORT_ENCODER]
    assert spec.profile_text(0) == "image:32x32x3,mask:32x32"
    assert spec.profile_text(2, separator=" ") == "image:256x256x3 mask:256x256"
    assert set(spec.profile()) == {"image", "mask"}
