"""The C++ host (hosts/cpp) against the Python runtime: built with CMake from the checkout, then fed the same
files. Its masks and labels must equal the Python runtime's on the same backend, its errors must read the
same, its bank files must load in Python and back, and one segmenter must serve many threads.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.cpp_host import build_cpp_host, openvino_cmake_dir
from runtime.backends import cpu_has_bf16
from runtime.bank_files import write_bank_file
from runtime.fewshot import FewShotSegmenter
from runtime.images import load_image, load_mask
from runtime.parts import PartSegmenter
from runtime.support_selection import SupportSelection
from segdata.samples import episode_at_sizes, held_out_episodes

REPO = Path(__file__).resolve().parents[1]
# (width, height): the model's side, non-square both ways, larger and smaller than the model.
QUERY_SIZES = [(128, 128), (160, 96), (96, 200), (333, 257), (64, 64)]
SUPPORT_SIZES = [(128, 128), (200, 150), (96, 96), (150, 220), (100, 72)]
MAX_SHOTS = 5
BACKENDS = ["openvino"] + (["openvino-bf16"] if cpu_has_bf16() else [])


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """The C++ host built (and installed) from this checkout."""
    root = tmp_path_factory.mktemp("cpp")
    return build_cpp_host(root / "build", install=root / "prefix")


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Engines of the shipped synth DiffewS model (128 px) taking 1 to 5 shots, sides 32 to 512; more
    than 2 shots are reduced to 2 shots' tokens by the foreground rule, so 5 shots test the selection."""
    from export.diffews_build import build_diffews

    out = tmp_path_factory.mktemp("cpp-engines") / "engines"
    return build_diffews(
        out, max_shots=MAX_SHOTS, parity_episodes=1, max_side=512, selection="foreground", selection_budget=2
    )


def save(array: np.ndarray, path: Path) -> str:
    Image.fromarray(array).save(path)
    return str(path)


@pytest.fixture(scope="module")
def episode_files(tmp_path_factory):
    """Two held-out 5-shot episodes as PNG files: supports at mixed sizes, the query at every QUERY_SIZE."""
    root = tmp_path_factory.mktemp("cpp-episodes")
    files = []
    for e, episode in enumerate(held_out_episodes(128, shots=MAX_SHOTS, count=2, seed=3)):
        supports, masks, queries = [], [], []
        for q, size in enumerate(QUERY_SIZES):
            resized = episode_at_sizes(episode, size, SUPPORT_SIZES)
            queries.append(save(resized.query_image, root / f"e{e}_query{q}.png"))
        for s in range(MAX_SHOTS):
            supports.append(save(resized.support_images[s], root / f"e{e}_support{s}.png"))
            masks.append(save(resized.support_masks[s].astype(np.uint8) * 255, root / f"e{e}_mask{s}.png"))
        files.append({"supports": supports, "masks": masks, "queries": queries})
    return files


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=REPO, **kwargs)


def support_args(supports: list[str], masks: list[str]) -> list[str]:
    return [a for pair in zip(supports, masks) for a in ("--support", pair[0], "--support-mask", pair[1])]


def read_mask_png(path: Path) -> np.ndarray:
    return (np.asarray(Image.open(path)) > 0).astype(np.uint8)


def test_the_unit_tests_pass(host):
    done = run(["ctest", "--test-dir", host.build, "--output-on-failure"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "100% tests passed" in done.stdout


# ---------------------------------------------------------------- the same pixels from the same files


def png_file(path: Path, width: int, height: int, bit_depth: int, colour_type: int, samples: np.ndarray, chunks=()):
    """A PNG written by hand (Pillow cannot write 16-bit colour, 2- and 4-bit grey or an eXIf chunk)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    rows = []
    for row in samples.reshape(height, width * channels):
        if bit_depth == 16:
            data = row.astype(">u2").tobytes()
        elif bit_depth < 8:
            per_byte = 8 // bit_depth
            padded = np.zeros(-(-len(row) // per_byte) * per_byte, np.uint8)
            padded[: len(row)] = row
            data = bytes(
                sum(int(v) << (8 - bit_depth * (i + 1)) for i, v in enumerate(group))
                for group in padded.reshape(-1, per_byte)
            )
        else:
            data = row.astype(np.uint8).tobytes()
        rows.append(b"\x00" + data)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    before = [chunk(k, d) for k, d in chunks if k != b"eXIf-late"]
    late = [chunk(b"eXIf", d) for k, d in chunks if k == b"eXIf-late"]
    body = b"".join([chunk(b"IHDR", header), *before, chunk(b"IDAT", zlib.compress(b"".join(rows))), *late])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b""))
    return path


def exif_orientation(value: int) -> bytes:
    """A little-endian TIFF structure whose IFD 0 holds one tag, Orientation = value."""
    return b"II*\x00" + struct.pack("<IHHHIHHI", 8, 1, 0x0112, 3, 1, value, 0, 0)


def image_cases(folder: Path) -> dict[str, Path]:
    """PNG files of every colour type and depth the runtime reads, and the EXIF orientations."""
    rng = np.random.default_rng(0)
    h, w = 7, 5
    cases = {}
    for depth in (1, 2, 4, 8, 16):
        values = rng.integers(0, 2**depth, (h, w))
        values[0, 0] = 0
        cases[f"grey{depth}"] = png_file(folder / f"grey{depth}.png", w, h, depth, 0, values)
    for depth in (8, 16):
        top = 2**depth
        cases[f"rgb{depth}"] = png_file(folder / f"rgb{depth}.png", w, h, depth, 2, rng.integers(0, top, (h, w, 3)))
        alpha = rng.integers(0, top, (h, w, 4))
        alpha[..., 3] = top - 1  # fully opaque: the colour decides
        cases[f"rgba{depth}-opaque"] = png_file(folder / f"rgba{depth}.png", w, h, depth, 6, alpha)
        grey_alpha = rng.integers(0, top, (h, w, 2))
        grey_alpha[..., 1] = np.where(grey_alpha[..., 0] >= 256 if depth == 16 else grey_alpha[..., 0] > 0, top - 1, 0)
        cases[f"la{depth}-agreeing"] = png_file(folder / f"la{depth}.png", w, h, depth, 4, grey_alpha)
    palette = rng.integers(0, 256, (6, 3)).astype(np.uint8)
    indices = rng.integers(0, 6, (h, w))
    for depth in (4, 8):
        cases[f"palette{depth}"] = png_file(
            folder / f"palette{depth}.png",
            w,
            h,
            depth,
            3,
            indices,
            [(b"PLTE", palette.tobytes()), (b"tRNS", b"\x00\x80")],
        )
    photo = rng.integers(0, 256, (h, w, 3))
    for orientation in range(1, 9):
        cases[f"exif{orientation}"] = png_file(
            folder / f"exif{orientation}.png", w, h, 8, 2, photo, [(b"eXIf", exif_orientation(orientation))]
        )
    cases["exif6-after-pixels"] = png_file(
        folder / "late.png", w, h, 8, 2, photo, [(b"eXIf-late", exif_orientation(6))]
    )
    tiff = exif_orientation(6).hex()  # ImageMagick's text form, hex split over lines, compressed
    raw = f"\nexif\n{len(tiff) // 2:8}\n{tiff[:20]}\n{tiff[20:]}\n".encode()
    cases["raw-profile-exif6"] = png_file(
        folder / "raw.png", w, h, 8, 2, photo, [(b"zTXt", b"Raw profile type exif\x00\x00" + zlib.compress(raw))]
    )
    xmp = b'XML:com.adobe.xmp\x00\x00\x00\x00\x00<x:xmpmeta><rdf:Description tiff:Orientation="8"/></x:xmpmeta>'
    cases["xmp8"] = png_file(folder / "xmp.png", w, h, 8, 2, photo, [(b"iTXt", xmp)])
    Image.fromarray(photo.astype(np.uint8)).convert("L").save(folder / "pil-grey.png")
    cases["pil-grey"] = folder / "pil-grey.png"
    return cases


@pytest.mark.filterwarnings("ignore:Palette images with Transparency")  # Pillow's advice on a test file
def test_images_and_masks_read_as_the_python_runtime_reads_them(host, tmp_path):
    cases = image_cases(tmp_path)
    for name, path in cases.items():
        for kind, python_reader in (("image", load_image), ("mask", load_mask)):
            out = tmp_path / f"{name}-{kind}-cpp.png"
            done = run([host.tool("probe"), kind, path, out])
            expected = python_reader(str(path))
            assert done.returncode == 0, f"{name} {kind}: {done.stderr}"
            got = np.asarray(Image.open(out))
            assert got.shape == expected.shape and np.array_equal(got, expected), f"{name} read as a {kind} differs"
    assert not np.array_equal(load_image(str(cases["exif6"])), load_image(str(cases["exif1"])))  # orientation matters


def test_an_ambiguous_alpha_mask_is_refused_with_the_same_message(host, tmp_path):
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[:3, :, :3] = 255  # colour marks the top half
    rgba[:, :3, 3] = 255  # alpha marks the left half
    path = png_file(tmp_path / "ambiguous.png", 6, 6, 8, 6, rgba)
    with pytest.raises(ValueError) as python_error:
        load_mask(str(path), "mask")
    done = run([host.tool("probe"), "mask", path, tmp_path / "out.png"])
    assert done.returncode == 3
    assert done.stderr.strip() == f"error: {python_error.value}"


def test_resizing_equals_pillow(host, tmp_path):
    rng = np.random.default_rng(1)
    # Pillow 13 runs the vertical pass first when the height shrinks by more than twice the width's
    # shrink: both orders are here, with shrinking and growing sides.
    sizes = [
        ((64, 64), (48, 48)),
        ((333, 257), (64, 64)),
        ((50, 90), (64, 64)),
        ((17, 40), (128, 31)),
        ((192, 118), (190, 54)),
        ((64, 64), (65, 63)),
        ((30, 20), (64, 64)),
    ]
    for (w, h), (out_w, out_h) in sizes:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        source = save(image, tmp_path / f"in{w}x{h}.png")
        out = tmp_path / f"bilinear{w}x{h}.png"
        assert run([host.tool("probe"), "resize-bilinear", source, out_h, out_w, out]).returncode == 0
        expected = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.BILINEAR))
        assert np.array_equal(np.asarray(Image.open(out)), expected), f"bilinear {w}x{h} -> {out_w}x{out_h}"
        labels = rng.integers(0, 4, (out_h, out_w), dtype=np.uint8)
        source = save(np.repeat(labels[..., None], 3, axis=2), tmp_path / f"labels{w}x{h}.png")
        out = tmp_path / f"nearest{w}x{h}.png"
        assert run([host.tool("probe"), "resize-nearest", source, h, w, out]).returncode == 0
        expected = np.asarray(Image.fromarray(labels).resize((w, h), Image.NEAREST))
        assert np.array_equal(np.asarray(Image.open(out)), expected), f"nearest {out_w}x{out_h} -> {w}x{h}"


def test_support_selection_keeps_the_python_runtimes_tokens(host, tmp_path):
    rng = np.random.default_rng(3)
    files, masks = [], []
    for s, (h, w) in enumerate([(128, 128), (96, 160), (20, 24), (200, 150), (64, 64)]):  # one smaller than a grid
        mask = np.zeros((h, w), np.uint8)
        top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[top : top + h // 3, left : left + w // 3] = 1
        masks.append(mask)
        files.append(save(mask * 255, tmp_path / f"mask{s}.png"))
    for rule in ("uniform", "stratified", "foreground"):
        for side in (32, 16, 8, 4):
            for budget, seed in ((2, 0), (3, 7)):
                done = run([host.tool("probe"), "select", rule, budget, seed, side, *files])
                assert done.returncode == 0, done.stderr
                want = SupportSelection(rule, budget, seed).indices(masks, (side, side))
                got = np.array([int(line) for line in done.stdout.split()])
                assert np.array_equal(got, want), (rule, side, budget)


# ---------------------------------------------------------------- the same masks on the same engines


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shots", [1, MAX_SHOTS])
def test_masks_equal_the_python_runtimes(host, engines, episode_files, tmp_path, shots, backend):
    python = FewShotSegmenter.from_dir(engines, backend=backend)
    foreground = []
    for e, files in enumerate(episode_files):
        supports, masks = files["supports"][:shots], files["masks"][:shots]
        out = tmp_path / f"episode{e}"
        done = run(
            [
                host.segment,
                "--engines",
                engines,
                *support_args(supports, masks),
                "--query",
                *files["queries"],
                "--out",
                out,
                "--backend",
                backend,
            ]
        )
        assert done.returncode == 0, done.stderr
        python.set_support(supports, masks)
        for query in files["queries"]:
            expected = python.segment(query)
            got = read_mask_png(out / f"{Path(query).stem}_mask.png")
            assert got.shape == expected.shape == load_image(query).shape[:2]
            assert np.array_equal(got, expected), f"{query}, {shots} shot(s), {backend}: masks differ"
            foreground.append(expected.mean())
    assert 0.01 < np.mean(foreground) < 0.9  # real masks, not all empty or all full


def test_part_labels_equal_the_python_runtimes(host, slime_engines, tmp_path):
    _, directory = slime_engines
    python = PartSegmenter.from_dir(directory, backend="openvino")
    rng = np.random.default_rng(2)
    images = [
        save(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), tmp_path / f"img{w}x{h}.png")
        for w, h in [(64, 64), (100, 70), (50, 90), (130, 130)]
    ]
    done = run([host.parts, "--engines", directory, "--image", *images, "--out", tmp_path / "parts"])
    assert done.returncode == 0, done.stderr
    classes = set()
    for image in images:
        expected = python.segment(image)
        got = np.asarray(Image.open(tmp_path / "parts" / f"{Path(image).stem}_labels.png"))
        assert np.array_equal(got, expected), f"{image}: labels differ"
        classes |= set(np.unique(expected).tolist())
    assert len(classes) > 1  # the labels say something
    legend = ", ".join(f"{k}={name}" for k, name in enumerate(python.class_names))
    assert f"labels {legend}" in done.stdout


# ---------------------------------------------------------------- the same errors


def error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    return lines[-1] if lines else done.stderr


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, episode_files, engines):
    """name -> the command-line arguments (after --engines) of a bad request, and the files behind them."""
    root = tmp_path_factory.mktemp("cpp-bad")
    files = episode_files[0]
    support, mask, query = files["supports"][0], files["masks"][0], files["queries"][0]
    blank = save(np.zeros((128, 128), np.uint8), root / "blank.png")
    small = save(np.zeros((20, 20, 3), np.uint8), root / "small.png")
    wide = save(np.zeros((40, 600, 3), np.uint8), root / "wide.png")
    other_size = save(np.full((64, 64), 255, np.uint8), root / "other_size.png")
    modified = root / "modified"
    shutil.copytree(engines, modified)
    with open(modified / "query_segmenter.onnx", "ab") as f:
        f.write(b"\0")
    (root / "taken").mkdir()
    (root / "taken" / f"{Path(query).stem}_mask.png").write_bytes(b"")
    foreign = write_bank_file(root / "foreign.npz", {"key_00": np.zeros((1, 4, 4), np.float32)}, "0" * 64)
    out = str(root / "out")
    one = ["--support", support, "--support-mask", mask]
    return {
        "empty mask": [engines, "--support", support, "--support-mask", blank, "--query", query, "--out", out],
        "mask of another size": [
            engines,
            "--support",
            support,
            "--support-mask",
            other_size,
            "--query",
            query,
            "--out",
            out,
        ],
        "too many shots": [engines, *support_args([support] * 6, [mask] * 6), "--query", query, "--out", out],
        "query too small": [engines, *one, "--query", small, "--out", out],
        "query too wide": [engines, *one, "--query", wide, "--out", out],
        "support too small": [engines, "--support", small, "--support-mask", blank, "--query", query, "--out", out],
        "threshold 1.5": [engines, *one, "--query", query, "--out", out, "--threshold", "1.5"],
        "threshold nan": [engines, *one, "--query", query, "--out", out, "--threshold", "nan"],
        "missing support": [
            engines,
            "--support",
            str(root / "absent.png"),
            "--support-mask",
            mask,
            "--query",
            query,
            "--out",
            out,
        ],
        "missing query": [engines, *one, "--query", str(root / "absent.png"), "--out", out],
        "not an engine directory": [str(root), *one, "--query", query, "--out", out],
        "modified graph": [str(modified), *one, "--query", query, "--out", out],
        "output exists": [engines, *one, "--query", query, "--out", str(root / "taken")],
        "another model's bank": [engines, "--load-support", str(foreign), "--query", query, "--out", out],
        "missing bank": [engines, "--load-support", str(root / "absent.npz"), "--query", query, "--out", out],
    }


def test_bad_inputs_get_the_python_runtimes_errors(host, bad_inputs):
    for name, arguments in bad_inputs.items():
        command = ["--engines", *arguments[:1], *arguments[1:], "--backend", "openvino"]
        python = run([sys.executable, "-m", "runtime.segment", *command])
        cpp = run([host.segment, *command])
        assert python.returncode not in (0, 1) and error_line(python).startswith("error:"), f"{name}: {python.stderr}"
        assert (cpp.returncode, error_line(cpp)) == (python.returncode, error_line(python)), name


def test_a_bad_command_line_is_a_usage_error(host, episode_files, tmp_path):
    files = episode_files[0]
    done = run(
        [
            host.segment,
            "--engines",
            tmp_path,
            "--support",
            files["supports"][0],
            "--query",
            files["queries"][0],
            "--out",
            tmp_path,
        ]
    )
    assert done.returncode == 2
    assert error_line(done) == "error: 1 --support images but 0 --support-mask files"


# ---------------------------------------------------------------- banks, threads, linking


def test_bank_files_cross_between_the_languages(host, engines, episode_files, tmp_path):
    files = episode_files[1]
    supports, masks, query = files["supports"][:2], files["masks"][:2], files["queries"][1]
    # Both sides name the backend: on a CPU with bf16 the host's `auto` would pick openvino-bf16,
    # whose bank differs from fp32's in the last bits.
    python = FewShotSegmenter.from_dir(engines, backend="openvino")
    python.set_support(supports, masks)
    expected = python.segment(query)
    # C++ encodes and saves; Python loads: the same bank, bit for bit, and the same mask.
    done = run(
        [
            host.segment,
            "--engines",
            engines,
            "--backend",
            "openvino",
            *support_args(supports, masks),
            "--save-support",
            tmp_path / "cpp.npz",
            "--query",
            query,
            "--out",
            tmp_path / "a",
        ]
    )
    assert done.returncode == 0, done.stderr
    loaded = python.read_support(tmp_path / "cpp.npz")
    assert all(np.array_equal(loaded.arrays[n], python.bank[n]) for n in python.bank_names)
    assert np.array_equal(python.segment(query, support=loaded), expected)
    # Python saves; C++ loads.
    python.save_support(tmp_path / "python.npz")
    done = run(
        [
            host.segment,
            "--engines",
            engines,
            "--backend",
            "openvino",
            "--load-support",
            tmp_path / "python.npz",
            "--query",
            query,
            "--out",
            tmp_path / "b",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert np.array_equal(read_mask_png(tmp_path / "b" / f"{Path(query).stem}_mask.png"), expected)
    assert done.stdout.startswith("2 support shot(s)")
    # An existing bank file is never overwritten unasked.
    again = run(
        [
            host.segment,
            "--engines",
            engines,
            "--backend",
            "openvino",
            *support_args(supports[:1], masks[:1]),
            "--save-support",
            tmp_path / "cpp.npz",
            "--query",
            query,
            "--out",
            tmp_path / "c",
        ]
    )
    assert again.returncode == 5 and python.read_support(tmp_path / "cpp.npz").shots == 2


def test_one_segmenter_serves_many_threads(host, engines, episode_files):
    a, b = episode_files
    command = [
        host.tool("concurrency"),
        engines,
        "openvino",
        4,
        3,
        a["supports"][0],
        a["masks"][0],
        b["supports"][0],
        b["masks"][0],
        *a["queries"],
        *b["queries"][:2],
    ]
    done = run(command)
    assert done.returncode == 0, done.stdout + done.stderr
    counts = json.loads(done.stdout)
    queries = len(a["queries"]) + 2
    assert counts["calls"] == 2 * 4 * 3 * queries
    assert counts["wrong_shared"] == counts["wrong_swapped"] == counts["wrong_after_failure"] == 0
    assert counts["refused"] == 2 and counts["shots"] == 1
    assert counts["queries_where_a_and_b_differ"] > 0  # the swap phase could have seen a mix


def test_another_cmake_project_links_the_installed_library(host, engines, episode_files, tmp_path):
    files = episode_files[0]
    prefix = host.build.parent / "prefix"
    consumer = REPO / "hosts" / "cpp" / "examples" / "consumer"
    build = tmp_path / "consumer"
    for step in (
        [
            "cmake",
            "-S",
            consumer,
            "-B",
            build,
            f"-DCMAKE_PREFIX_PATH={prefix}",
            f"-DOpenVINO_DIR={openvino_cmake_dir()}",
        ],
        ["cmake", "--build", build, "-j", os.cpu_count() or 1],
    ):
        done = run(step)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    done = run([build / "count-foreground", engines, files["supports"][0], files["masks"][0], files["queries"][0]])
    assert done.returncode == 0, done.stderr
    python = FewShotSegmenter.from_dir(engines, backend="openvino")
    python.set_support(files["supports"][:1], files["masks"][:1])
    assert int(done.stdout) == int(python.segment(files["queries"][0]).sum())
