"""TensorRT and the GPU backends, checked on the CPU: parser compatibility, profiles, build script, fp32 attention, backends."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export import build_engine, tensorrt_build, trt_attention_fp32
from export.tensorrt_check import support_table, tensorrt_problems
from runtime.fewshot import FewShotSegmenter
from runtime.manifest import EngineDirError, Manifest
from runtime.sections import QUERY_SEGMENTER, SUPPORT_ENCODER
from runtime.sessions import onnxruntime_providers
from runtime.tensorrt_graph import GpuUnavailable, gpu_compute_capability, select_plan


def test_exported_graphs_are_parseable_by_tensorrt(built):
    _, engines = built
    manifest = Manifest.read(engines)
    for entry in manifest.graphs.values():
        assert tensorrt_problems(engines / entry.file) == [], entry.file


def test_tensorrt_builds_refuse_onnxruntime_only_fusions(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_engine.parse_args(["--out", str(tmp_path / "e"), "--tensorrt", "--optimize"])
    assert "drop it for --tensorrt" in capsys.readouterr().err


def test_support_table_names_its_source():
    table = support_table()
    assert "onnx-tensorrt" in table["source"]["document"] and table["tensorrt"]
    assert {"MatMul", "Softmax", "Resize", "GroupNormalization", "Cast"} <= set(table["supported"])
    assert not set(table["supported"]) & set(table["unsupported"])


def _graph_with_problems(path):
    """A graph with an antialiased Resize, a contrib operator, computed axes and a uint8 intermediate."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    nodes = [
        helper.make_node(
            "Constant", [], ["sizes"], value=helper.make_tensor("s", TensorProto.INT64, [4], [1, 3, 4, 4])
        ),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["r"], mode="linear", antialias=1, name="resize"),
        helper.make_node("Cast", ["r"], ["r8"], to=TensorProto.UINT8, name="to_uint8"),
        helper.make_node("Cast", ["r8"], ["rf"], to=TensorProto.FLOAT, name="back"),
        helper.make_node("Shape", ["rf"], ["shape"], start=0, end=1),
        helper.make_node("ReduceMax", ["rf", "shape"], ["m"], keepdims=1, name="reduce"),
        helper.make_node("Gelu", ["m"], ["g"], domain="com.microsoft", name="fused"),
        helper.make_node("Det", ["g"], ["d"], name="det"),
        helper.make_node("Add", ["rf", "rf"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "bad", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.save(model, str(path))
    return path


def test_problems_are_named(tmp_path):
    problems = "\n".join(tensorrt_problems(_graph_with_problems(tmp_path / "bad.onnx")))
    assert "resize (Resize): antialiased Resize" in problems
    assert "fused (Gelu): operator domain 'com.microsoft'" in problems
    assert "det (Det): not supported" in problems
    assert "reduce (ReduceMax): axes come from a computed tensor" in problems
    assert "tensor r8 is uint8 inside the graph" in problems


# --------------------------------------------------------------------------- plans, profiles, build script
def test_profiles_follow_the_descriptors(built):
    _, engines = built
    manifest = Manifest.read(engines)
    query = manifest.graph(QUERY_SEGMENTER).spec.profile()
    assert query["image"] == ((32, 32, 3), (64, 64, 3), (512, 512, 3))
    key = manifest.diffews.layers[0]
    assert query["key_00"] == (
        (1, key.tokens, key.channels),
        (1, key.tokens, key.channels),
        (3, key.tokens, key.channels),
    )
    assert "threshold" not in query  # a static scalar needs no profile entry
    assert set(manifest.graph(SUPPORT_ENCODER).spec.profile()) == {"image", "mask"}


def _script_commands(script: str, tool: str) -> list[list[str]]:
    return [shlex.split(line.lstrip("# ")) for line in script.splitlines() if line.lstrip("# ").startswith(tool + " ")]


def test_build_script_is_valid_shell_with_the_descriptors_shapes(built, tmp_path):
    _, source = built
    engines = tmp_path / "engines"
    shutil.copytree(source, engines)
    assert tensorrt_build.main([str(engines), "--refittable"]) == 3  # no tensorrt here: script only
    script = engines / tensorrt_build.SCRIPT_FILE
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert (engines / "trt_attention_fp32.py").is_file() and script.stat().st_mode & 0o100
    manifest = Manifest.read(engines)
    commands = _script_commands(script.read_text(), "polygraphy")
    assert [c[2] for c in commands] == ["support_encoder.onnx", "query_segmenter.onnx"]
    for command, name in zip(commands, (SUPPORT_ENCODER, QUERY_SEGMENTER)):
        profile = manifest.graph(name).spec.profile()
        for index, flag in enumerate(("--trt-min-shapes", "--trt-opt-shapes", "--trt-max-shapes")):
            start = command.index(flag) + 1
            given = dict(arg.split(":", 1) for arg in command[start : start + len(profile)])
            assert {n: json.loads(s) for n, s in given.items()} == {n: list(p[index]) for n, p in profile.items()}
        assert command[command.index("-o") + 1] == f"{name}.trt${{TRT}}.sm${{SM}}.plan"
        assert {"--fp16", "--refittable", "--trt-npps"} <= set(command)
    trtexec = _script_commands(script.read_text(), "trtexec")
    assert len(trtexec) == 2 and "--maxShapes=image:512x512x3,mask:512x512" in trtexec[0]


def test_build_script_flags_exist_in_the_installed_polygraphy(built, tmp_path):
    _, source = built
    help_text = subprocess.run(
        [str(Path(sys.executable).with_name("polygraphy")), "convert", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    manifest = Manifest.read(source)
    entry = manifest.graph(QUERY_SEGMENTER)
    command = tensorrt_build.polygraphy_command(entry.file, entry.spec, "q.plan", "fp16", refittable=True)
    for flag in (arg for arg in command if arg.startswith("-")):
        assert re.search(rf"(^|\s){re.escape(flag)}[\s,]", help_text), flag


def test_plans_built_on_the_target_are_registered_in_the_manifest(built, tmp_path):
    _, source = built
    engines = tmp_path / "engines"
    shutil.copytree(source, engines)
    with pytest.raises(SystemExit, match="run .*build_tensorrt.sh"):
        tensorrt_build.main([str(engines), "--register"])
    tensorrt_build.main([str(engines), "--precision", "fp32"])  # writes the script and its settings
    for name in (SUPPORT_ENCODER, QUERY_SEGMENTER):  # what build_tensorrt.sh would leave on a Jetson Orin
        (engines / tensorrt_build.plan_file(name, "10.3.0", "8.7")).write_bytes(b"plan " + name.encode())
    assert tensorrt_build.main([str(engines), "--register"]) == 0
    plans = Manifest.read(engines).tensorrt_plans
    entry = plans[QUERY_SEGMENTER][0]
    assert entry["file"] == "query_segmenter.trt10.3.0.sm87.plan"
    assert (entry["tensorrt"], entry["compute_capability"], entry["precision"]) == ("10.3.0", "8.7", "fp32")
    assert select_plan(plans[QUERY_SEGMENTER], "10.3.0", "8.7", QUERY_SEGMENTER) == entry
    with pytest.raises(
        EngineDirError, match=r"no TensorRT plan for TensorRT 10.8.0 .* \(built: TensorRT 10.3.0 / sm 8.7\)"
    ):
        select_plan(plans[QUERY_SEGMENTER], "10.8.0", "8.7", QUERY_SEGMENTER)


# --------------------------------------------------------------------------- fp32 attention pass
class _Tensor:
    def __init__(self, name):
        self.name = name


class _Layer:
    def __init__(self, name, kind, inputs, outputs):
        self.name, self.type, self.precision = name, kind, None
        self._inputs, self._outputs = [_Tensor(n) for n in inputs], [_Tensor(n) for n in outputs]
        self.output_types = {}
        self.num_inputs, self.num_outputs = len(inputs), len(outputs)

    def get_input(self, k):
        return self._inputs[k]

    def get_output(self, k):
        return self._outputs[k]

    def set_output_type(self, k, dtype):
        self.output_types[k] = dtype


class _Network:
    def __init__(self, layers):
        self.layers, self.num_layers = layers, len(layers)

    def get_layer(self, i):
        return self.layers[i]


_TRT = types.SimpleNamespace(
    LayerType=types.SimpleNamespace(
        **{k: k.lower() for k in ("SOFTMAX", "MATRIX_MULTIPLY", "ELEMENTWISE", "SCALE", "SHUFFLE", "CAST", "UNARY")},
        CONSTANT="constant",
        CONVOLUTION="convolution",
    ),
    float32="fp32",
)


def test_attention_pass_pins_scores_softmax_and_value_product_to_fp32():
    layers = [
        _Layer("conv", "convolution", ["x"], ["h"]),
        _Layer("qk", "matrix_multiply", ["q", "k"], ["scores"]),
        _Layer("scale_const", "constant", [], ["scale"]),
        _Layer(
            "scale", "elementwise", ["scale", "scores"], ["scaled"]
        ),  # the constant first, as exporters may write it
        _Layer("softmax", "softmax", ["scaled"], ["probs"]),
        _Layer("pv", "matrix_multiply", ["probs", "v"], ["out"]),
        _Layer("proj", "matrix_multiply", ["out", "w"], ["y"]),
    ]
    assert trt_attention_fp32.postprocess(_Network(layers), trt=_TRT) == 4
    pinned = {layer.name for layer in layers if layer.precision == "fp32"}
    assert pinned == {"qk", "scale", "softmax", "pv"}
    assert all(layer.output_types == {0: "fp32"} for layer in layers if layer.name in pinned)


# --------------------------------------------------------------------------- backends
def test_resident_bank_through_io_binding_equals_plain_feeds(built, episodes):
    _, engines = built
    segmenter = FewShotSegmenter.from_dir(engines)
    ep = episodes[1]
    segmenter.set_support(ep.support_images, [m.astype(np.uint8) for m in ep.support_masks])
    feed = {"image": ep.query_image, "threshold": np.array(0.25, np.float32), **segmenter.bank}
    plain = segmenter.query_segmenter.run(feed)[0]
    np.testing.assert_array_equal(segmenter.segment(ep.query_image, threshold=0.25), plain)
    with pytest.raises(ValueError, match=r"given twice \['key_00'\]"):
        segmenter.query_segmenter.run(
            {"image": ep.query_image, "threshold": feed["threshold"], "key_00": feed["key_00"]},
            resident=segmenter._support.resident,
        )


def test_backend_choice_errors_are_clear(built):
    _, engines = built
    with pytest.raises(ValueError, match="unknown backend 'cuda'; choose one of"):
        FewShotSegmenter.from_dir(engines, backend="cuda")
    with pytest.raises(ValueError, match=r"\['CUDAExecutionProvider'\] are not in this onnxruntime build"):
        FewShotSegmenter.from_dir(engines, backend="onnxruntime-cuda")
    with pytest.raises(ValueError, match="not in this onnxruntime build.*install onnxruntime-gpu"):
        FewShotSegmenter.from_dir(engines, backend="onnxruntime-tensorrt")
    with pytest.raises(ValueError, match="providers= applies to backend 'onnxruntime' only"):
        FewShotSegmenter.from_dir(engines, backend="onnxruntime-cuda", providers=["CPUExecutionProvider"])
    with pytest.raises(EngineDirError, match="no TensorRT plans .* python -m export.tensorrt_build"):
        FewShotSegmenter.from_dir(engines, backend="tensorrt")


def test_onnxruntime_tensorrt_profiles_come_from_the_descriptors(built):
    _, engines = built
    spec = Manifest.read(engines).graph(SUPPORT_ENCODER).spec
    (_, options), *_ = onnxruntime_providers("onnxruntime-tensorrt", spec, engines)
    assert options["trt_profile_min_shapes"] == "image:32x32x3,mask:32x32"
    assert options["trt_profile_max_shapes"] == "image:512x512x3,mask:512x512"
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"].endswith("ort_trt_cache")


def test_a_missing_gpu_is_named(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi, as on this machine or an older Jetson
    with pytest.raises(GpuUnavailable, match="give the compute capability by hand"):
        gpu_compute_capability()
