"""`python -m train.diffews` under torchrun and accelerate launch: 2 CPU processes (gloo) on tiny-random.

Equivalence: 2 processes with 1 episode each per micro-batch train on the same episodes as 1
process with 2 (the job's batch depends on the seed and the step only), so their loss curves and
final weights agree up to float reduction order. Measured here: the same logged losses to 6
decimals and a largest weight difference of about 4e-6 after 4 steps at lr 1e-4; the tolerances
below are 5x that, and a 1-process run with half the batch is shown to differ by far more.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from modeling.diffews_folder import UNET_WEIGHTS

RUN = ["--base", "tiny-random", "--data", "synth", "--pool-size", "60", "--max-shots", "2", "--lr", "1e-4",
       "--grad-accum", "2", "--steps", "4", "--checkpoint-every", "2", "--log-every", "1", "--device", "cpu",
       "--threads", "1"]  # fmt: skip
WEIGHT_TOLERANCE = 2e-5  # largest |w_2proc - w_1proc| allowed; measured 3.9e-6
LOSS_TOLERANCE = 1e-5  # relative, per logged step, for the loss and the gradient norm; measured 0 at 6 decimals
FINAL_FILES = ("diffews.json", "unet", "vae", "empty_text_embedding.safetensors")

pytestmark = pytest.mark.slow  # each test starts training processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher: str, out, episodes: int, *extra: str) -> str:
    """Runs train.diffews with `launcher` ("python", "torchrun" or "accelerate", 2 processes); returns its output."""
    prefix = {
        "python": [sys.executable, "-m", "train.diffews"],
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                     "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "train.diffews"],
        # --multi_gpu is accelerate's multi-process launcher; on a machine without CUDA the processes run
        # on the CPU with gloo. (`--cpu --num_processes 2` would start one process: accelerate's CPU
        # launcher spreads processes through MPI only.)
        "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), "-m", "train.diffews"],
    }[launcher]  # fmt: skip
    command = [*prefix, *RUN, "--episodes", str(episodes), "--out", str(out), *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{launcher} failed:\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def logged(out, key: str) -> dict[int, float]:
    """step -> the logged `key` ("loss", or "grad_norm": the job's gradient norm before clipping)."""
    return {r["step"]: r[key] for r in map(json.loads, (out / "logs" / "train.jsonl").read_text().splitlines())}


def largest_weight_difference(a, b) -> float:
    wa, wb = load_file(str(a / UNET_WEIGHTS)), load_file(str(b / UNET_WEIGHTS))
    assert set(wa) == set(wb)
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def assert_same_training(a, b) -> None:
    gaps = {}
    for key in ("loss", "grad_norm"):  # the norm also sees the gradients' scale, which clipping and Adam hide
        la, lb = logged(a, key), logged(b, key)
        assert sorted(la) == sorted(lb) == [0, 1, 2, 3]
        gaps[key] = max(abs(la[s] - lb[s]) / abs(lb[s]) for s in la)
    weight_gap = largest_weight_difference(a, b)
    print(f"{a.name} vs {b.name}: relative gaps {gaps}, weights differ by {weight_gap:.1e}")  # pytest -s
    assert max(gaps.values()) <= LOSS_TOLERANCE and weight_gap <= WEIGHT_TOLERANCE


def resumed_copy(run, to):
    """A copy of a finished run with its final model removed: what a run killed after its step-2 checkpoint leaves."""
    shutil.copytree(run, to)
    for name in FINAL_FILES:
        path = to / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return to


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    stdout = {"two": launch("torchrun", root / "two", episodes=1)}
    stdout["one"] = launch("python", root / "one", episodes=2)
    return root, stdout


def test_two_processes_train_as_one_process_with_twice_the_batch(runs, tmp_path):
    root, _ = runs
    assert_same_training(root / "two", root / "one")
    training = json.loads((root / "two" / "diffews.json").read_text())["training"]
    assert training["world_size"] == 2 and training["distributed_type"] == "MULTI_CPU"
    assert (
        training["global_batch"]
        == 1 * 2 * 2
        == json.loads((root / "one" / "diffews.json").read_text())["training"]["global_batch"]
    )
    # The comparison can fail: one process with one rank's share of the batch trains differently.
    launch("python", tmp_path / "half", episodes=1)
    half_gap = largest_weight_difference(tmp_path / "half", root / "one")
    print(f"half the batch vs one: weights differ by {half_gap:.1e}")
    assert half_gap > 5 * WEIGHT_TOLERANCE


def test_only_the_main_process_writes(runs):
    root, stdout = runs
    records = (root / "two" / "logs" / "train.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in records] == [0, 1, 2, 3]  # each step once, not once per process
    assert stdout["two"].count("done:") == 1
    listing = sorted(p.relative_to(root / "two").as_posix() for p in (root / "two").rglob("*"))
    assert listing == sorted(p.relative_to(root / "one").as_posix() for p in (root / "one").rglob("*"))
    assert not [p for p in (root / "two").rglob("*") if "partial" in p.name or p.name.endswith(".old")]


def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    root, _ = runs
    resumed = resumed_copy(root / "two", tmp_path / "resumed")
    output = launch("python", resumed, episodes=2)
    assert "resuming DiffewS at step 2" in output and "warning" not in output
    assert_same_training(resumed, root / "one")
    halved = resumed_copy(root / "two", tmp_path / "halved")  # the same episodes per process on half the processes
    assert "warning: the checkpoint was trained with a global batch of 4 (2 process(es)); this run's is 2" in launch(
        "python", halved, episodes=1
    )


def test_a_one_process_checkpoint_resumes_on_two_processes_with_accelerate_launch(runs, tmp_path):
    root, _ = runs
    resumed = resumed_copy(root / "one", tmp_path / "resumed")
    assert "resuming DiffewS at step 2" in launch("accelerate", resumed, episodes=1)
    assert json.loads((resumed / "diffews.json").read_text())["training"]["world_size"] == 2
    assert_same_training(resumed, root / "two")


def test_bf16_autocast_and_gradient_checkpointing_run_under_ddp(runs, tmp_path):
    """accelerate's bf16 autocast (CPU) and per-stream checkpointing inside the DDP-wrapped objective."""
    root, _ = runs
    launch("torchrun", tmp_path / "bf16", 1, "--mixed-precision", "bf16", "--gradient-checkpointing")
    bf16, fp32 = logged(tmp_path / "bf16", "loss"), logged(root / "two", "loss")
    assert bf16[0] != fp32[0]  # autocast is on: bf16 rounds the forward
    assert bf16 == pytest.approx(fp32, rel=0.02)  # and it trains on the same episodes
    training = json.loads((tmp_path / "bf16" / "diffews.json").read_text())["training"]
    assert training["mixed_precision"] == "bf16" and training["gradient_checkpointing"] and training["world_size"] == 2
