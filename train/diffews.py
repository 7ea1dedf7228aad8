"""Fine-tunes a base latent diffusion UNet into DiffewS (one-step few-shot segmentation).

    python -m train.diffews --out runs/diffews-fold0                       # synth base, synthetic fold 0
    python -m train.diffews --base sd21 --base-path /models/sd-2-1 --resolution 512 \\
        --data coco20i --data-root /data/COCO2014 --fold 0 --steps 20000 --mixed-precision fp16 \\
        --out runs/diffews-coco-fold0                                      # the authors' setting
    python -m train.diffews --out runs/diffews-fold0                       # again: resumes
    torchrun --nproc_per_node 4 -m train.diffews --episodes 1 --grad-accum 4 ...   # 4 GPUs, global batch 16

Under `torchrun` or `accelerate launch` (docs/distributed-training.md) each process trains on
its slice of the job's batch, `--episodes` per process; only the main process writes files.

Each optimiser step accumulates `--grad-accum` micro-batches of `--episodes` episodes. Every
micro-batch draws k in 1..`--max-shots` (DiffewS-n), then episodes with k supports; loss =
MSE(UNet query output, -query mask latent) at t = 1. Defaults are the authors' (AdamW lr 1e-5,
weight decay 0.01, linear decay to 1e-7 without warm-up, batch 1 x 4 accumulation, clip 1.0,
seed 42, 77-token empty prompt). The whole UNet trains, conv_in_ref included; VAE and text
encoder are frozen (the text encoder is used once, for the empty-prompt embedding).

Output folder (see `modeling.diffews_folder`): the model files, `logs/train.jsonl` and
`checkpoints/` (resumable, safetensors). A folder that already holds a finished model is never
overwritten unless `--overwrite` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from tqdm import tqdm

from modeling.diffews import DiffewsModel
from modeling.diffews_folder import CONFIG_FILE, save_diffews
from modeling.kv_fusion import ATTENTION_IMPLEMENTATIONS
from modeling.presets import PRESETS, build_model
from modeling.text_embeddings import EMPTY_PROMPT_TOKENS
from runtime.cli import refuse_to_overwrite
from runtime.files import write_text
from segdata.episodes import EpisodeSampler
from segdata.world import SyntheticWorld
from train.checkpoint import resume, save_checkpoint
from train.diffews_data import SOURCES, PosteriorCache, episode_latents, open_source
from train.loop import LossLog, linear_lr, seed_step, set_lr

TRAIN_STAGE = 3  # seed_step stage id (1, 2 are the base's VAE and LDM)


@dataclass
class DiffewsRecipe:
    """Training hyper-parameters (defaults: the authors' released script)."""

    steps: int = 20000
    lr: float = 1e-5
    lr_end: float = 1e-7
    weight_decay: float = 1e-2
    episodes: int = 1  # episodes per micro-batch (queries in one UNet call)
    grad_accum: int = 4
    max_shots: int = 2
    clip: float = 1.0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 42
    empty_prompt_tokens: int = 77
    attention: str = "sdpa"


def mixed_precision_mode(choice: str, cpu: bool) -> str:
    """accelerate's mixed-precision mode for `--mixed-precision`: "auto" is fp16 on CUDA and "no" on the CPU."""
    if choice == "auto":
        return "no" if cpu else "fp16"
    if choice == "fp16" and cpu:
        raise ValueError("fp16 mixed precision needs a CUDA device; use --mixed-precision bf16 or no on the CPU")
    return choice


def runs_on_cpu(device: str | None) -> bool:
    """Whether a run with `--device` `device` trains on the CPU (also under `accelerate launch --cpu`)."""
    forced = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return device == "cpu" or forced or (device is None and not torch.cuda.is_available())


def make_accelerator(recipe: DiffewsRecipe, device: str | None = None) -> Accelerator:
    """The accelerate engine of a run: one process, or one per rank under `accelerate launch` / `torchrun`.

    Args:
        device: "cpu" forces the CPU (gloo between processes), as `accelerate launch --cpu` does;
            None: CUDA where there is one.
    Raises:
        ValueError: fp16 asked for on the CPU, or settings that differ from an accelerator made
            earlier in this process (accelerate keeps one state per process).
    Mixed precision is `recipe.mixed_precision` (`--mixed-precision`); a launcher's
    `--mixed_precision` is not read.
    """
    cpu = runs_on_cpu(device)
    return Accelerator(
        gradient_accumulation_steps=recipe.grad_accum,
        mixed_precision=mixed_precision_mode(recipe.mixed_precision, cpu),
        cpu=cpu,  # also what makes torchrun's processes a MULTI_CPU (gloo) job without ACCELERATE_USE_CPU
    )


class EpisodeLoss(nn.Module):
    """One micro-batch's objective as one module: support stream, query stream and the MSE.

    DistributedDataParallel wraps this (not the UNet), so that it sees one forward per backward
    although the UNet runs twice, once per stream.
    """

    def __init__(self, model: DiffewsModel):
        super().__init__()
        self.model = model

    def forward(self, support, support_mask, query, query_mask) -> torch.Tensor:
        """(B, S, 4, h, w) x 2, (B, 4, h, w) x 2 latents -> the mean squared error of the query output to -z_mask."""
        bank = self.model.support_bank(support, support_mask)
        output = self.model.query_output(query, bank)
        return F.mse_loss(output.float(), -query_mask)


def episode_seed(seed: int, step: int, micro: int, index: int) -> int:
    """The posterior-noise seed of episode `index` of the job's micro-batch `micro` at optimiser `step`."""
    return int(np.random.SeedSequence([seed, TRAIN_STAGE, step, micro, index]).generate_state(1)[0])


def rank_episodes(sampler: EpisodeSampler, rng: np.random.Generator, per_rank: int, rank: int, world: int) -> list:
    """This rank's share of one micro-batch of the whole job: `per_rank` x `world` episode ids are drawn
    (cheap: indices only), the rank loads its own slice. The job's batch so depends on the seed and
    the step only, so a run on N processes trains on the same episodes as one process with N times
    the batch, and a checkpoint resumes on any number of processes at the same data position."""
    ids = [sampler.sample_ids(rng) for _ in range(per_rank * world)]
    return [sampler.episode(*i) for i in ids[rank * per_rank : (rank + 1) * per_rank]]


def train_diffews(
    model: DiffewsModel,
    source,
    out: Path,
    recipe: DiffewsRecipe,
    accelerator: Accelerator | None = None,
    progress: bool = True,
) -> dict:
    """Runs (or resumes) fine-tuning in place on `model`; returns a summary. Checkpoints go to out/checkpoints.

    Under `accelerate launch` or `torchrun` every process runs this; only the main one writes files.
    Each optimiser step takes `grad_accum` micro-batches of `episodes` episodes per process.
    """
    accelerator = accelerator or make_accelerator(recipe)
    if accelerator.gradient_accumulation_steps != recipe.grad_accum:
        raise ValueError(
            f"the accelerator accumulates {accelerator.gradient_accumulation_steps} micro-batches but the recipe "
            f"{recipe.grad_accum}; make it with make_accelerator(recipe)"
        )
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    unet = model.unet
    model.to(accelerator.device)
    model.train()
    model.vae.eval()
    model.gradient_checkpointing = recipe.gradient_checkpointing
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=recipe.lr, betas=(0.9, 0.999), weight_decay=recipe.weight_decay, eps=1e-8
    )
    ckpt = out / "checkpoints" / "diffews"
    log = LossLog(out / "logs" / "train.jsonl") if main else None
    start, saved = resume(ckpt, {"unet": unet}, optimizer, log, "DiffewS" if main else None)
    batch = {"global_batch": recipe.episodes * recipe.grad_accum * world, "world_size": world}
    if main and saved.get("global_batch", batch["global_batch"]) != batch["global_batch"]:
        print(
            f"warning: the checkpoint was trained with a global batch of {saved['global_batch']} "
            f"({saved['world_size']} process(es)); this run's is {batch['global_batch']} (episodes x grad_accum x "
            "processes): the recipe changes from here on. Keep the product the same to continue it unchanged",
            file=sys.stderr,
        )
    objective, optimizer = accelerator.prepare(EpisodeLoss(model), optimizer)
    cache = PosteriorCache(model.vae, model.resolution)
    samplers: dict[int, EpisodeSampler] = {}
    bar = tqdm(
        range(start, recipe.steps), initial=start, total=recipe.steps, desc="DiffewS", disable=not (progress and main)
    )
    losses = []
    for step in bar:
        rng = np.random.default_rng([recipe.seed, TRAIN_STAGE, step])  # data of a step never depends on resume
        seed_step(recipe.seed, TRAIN_STAGE, step)
        set_lr(optimizer, linear_lr(step, recipe.steps, recipe.lr, recipe.lr_end))
        step_loss, shots, grad_norm = torch.zeros((), device=accelerator.device), [], None
        accelerator.step = 0  # accelerate syncs on its count of micro-batches: restart it with each optimiser step
        for micro in range(recipe.grad_accum):
            k = int(rng.integers(1, recipe.max_shots + 1))  # one k per micro-batch of the whole job
            sampler = samplers.setdefault(k, EpisodeSampler(source, k))
            episodes = rank_episodes(sampler, rng, recipe.episodes, rank, world)
            seeds = [episode_seed(recipe.seed, step, micro, rank * recipe.episodes + j) for j in range(len(episodes))]
            latents = {n: t.to(accelerator.device) for n, t in episode_latents(cache, episodes, seeds).items()}
            with accelerator.accumulate(objective):  # no gradient all-reduce until the last micro-batch
                loss = objective(latents["support"], latents["support_mask"], latents["query"], latents["query_mask"])
                accelerator.backward(loss)  # divided by grad_accum by accelerate
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(unet.parameters(), recipe.clip)
                optimizer.step()  # a no-op before the last micro-batch
                optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach() / recipe.grad_accum
            shots.append(k)
        step_loss = float(accelerator.reduce(step_loss, reduction="mean"))  # the whole job's batch
        losses.append(step_loss)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        assert grad_norm is not None, "the last micro-batch of a step did not synchronise the gradients"
        if main and (step % recipe.log_every == 0 or step == recipe.steps - 1):
            log.write(step, loss=step_loss, grad_norm=float(grad_norm), mean_shots=float(np.mean(shots)))
        if (step + 1) % recipe.checkpoint_every == 0 and step + 1 < recipe.steps:
            if main:
                save_checkpoint(ckpt, step + 1, {"unet": unet}, optimizer.optimizer, extra=batch)
            accelerator.wait_for_everyone()
    model.eval()
    tail = losses[-50:]
    return {"final_loss_mean_last_50": round(float(np.mean(tail)), 5) if tail else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="model folder to write (or resume)")
    parser.add_argument("--base", default="synth", help=f"base preset ({', '.join(PRESETS)}) or diffusers folder")
    parser.add_argument("--base-path", default=None, help="local weights folder for sd21 / sd21-base")
    parser.add_argument("--resolution", type=int, default=None, help="image side (default: the preset's)")
    parser.add_argument("--data", choices=SOURCES, default="synth", help="training data source")
    parser.add_argument("--data-root", type=Path, default=None, help="data set folder for coco20i / folders")
    parser.add_argument("--fold", type=int, default=0, help="category fold whose held-out classes are never seen")
    parser.add_argument("--pool-size", type=int, default=4000, help="synth: scenes in the training pool")
    parser.add_argument("--world-seed", type=int, default=0, help="synth: seed of the world (the base's is 0)")
    r = DiffewsRecipe()
    parser.add_argument("--steps", type=int, default=r.steps, help="optimiser steps")
    parser.add_argument("--lr", type=float, default=r.lr, help="peak learning rate, decayed linearly")
    parser.add_argument("--weight-decay", type=float, default=r.weight_decay)
    parser.add_argument("--episodes", type=int, default=r.episodes, help="episodes per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=r.grad_accum, help="micro-batches per optimiser step")
    parser.add_argument("--max-shots", type=int, default=r.max_shots, help="each micro-batch uses 1..N supports")
    parser.add_argument("--clip", type=float, default=r.clip, help="gradient norm clipping")
    parser.add_argument(
        "--mixed-precision",
        choices=("auto", "no", "fp16", "bf16"),
        default=r.mixed_precision,
        help="auto: fp16 autocast on CUDA, fp32 on the CPU (bf16 autocast works on CPUs with AVX512-BF16)",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute each stream (support, query) in the backward pass: less memory, about one more forward",
    )
    parser.add_argument("--checkpoint-every", type=int, default=r.checkpoint_every)
    parser.add_argument("--log-every", type=int, default=r.log_every, help="optimiser steps between log records")
    parser.add_argument("--seed", type=int, default=r.seed)
    parser.add_argument(
        "--empty-prompt-tokens",
        type=int,
        choices=EMPTY_PROMPT_TOKENS,
        default=r.empty_prompt_tokens,
        help="77: padded empty prompt, as the authors train (default); 2: their inference pipeline's",
    )
    parser.add_argument("--attention", choices=ATTENTION_IMPLEMENTATIONS, default=r.attention)
    parser.add_argument("--save-dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda where there is one, else cpu"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished model in --out")
    args = parser.parse_args(argv)
    if min(args.max_shots, args.episodes, args.grad_accum, args.log_every, args.checkpoint_every) < 1:
        parser.error("--max-shots, --episodes, --grad-accum, --log-every and --checkpoint-every must be at least 1")
    out: Path = args.out
    refuse_to_overwrite([out / CONFIG_FILE], args.overwrite)  # a finished model, never replaced silently

    recipe = DiffewsRecipe(**{f.name: getattr(args, f.name) for f in fields(DiffewsRecipe) if hasattr(args, f.name)})
    try:
        mixed_precision_mode(recipe.mixed_precision, runs_on_cpu(args.device))
    except ValueError as err:
        parser.error(str(err))
    accelerator = make_accelerator(recipe, args.device)
    if args.threads:  # after the accelerator: on several CPU processes accelerate sets its own thread count
        torch.set_num_threads(args.threads)
    base = build_model(args.base, path=args.base_path)
    if args.resolution:
        base.resolution = args.resolution
    torch.manual_seed(recipe.seed)
    model = DiffewsModel.from_base(base, tokens=recipe.empty_prompt_tokens, attention=recipe.attention)
    del base.text_encoder  # only needed for the embedding
    world = SyntheticWorld(resolution=model.resolution, seed=args.world_seed)
    source = open_source(args.data, args.data_root, args.fold, world, args.pool_size)

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    started = time.time()
    summary = train_diffews(model, source, out, recipe, accelerator)
    elapsed = round(time.time() - started, 1)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:  # only the main process writes files
        return 0
    timings_path = out / "logs" / "timings.json"
    previous = json.loads(timings_path.read_text()).get("train_s", 0.0) if timings_path.exists() else 0.0
    write_text(timings_path, json.dumps({"train_s": round(previous + elapsed, 1)}))
    info = {
        "base": args.base,
        "base_path": args.base_path,
        "data": {"source": args.data, "root": str(args.data_root) if args.data_root else None, "fold": args.fold},
        "training": {
            **asdict(recipe),
            "command": "python -m train.diffews " + " ".join(sys.argv[1:] if argv is None else argv),
            "device": str(accelerator.device),
            "world_size": accelerator.num_processes,  # processes; each ran `episodes` x `grad_accum` per step
            "global_batch": recipe.episodes * recipe.grad_accum * accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type.value),
            "torch_threads": torch.get_num_threads(),
            "wall_time_s": round(previous + elapsed, 1),
            **summary,
        },
    }
    if args.data.startswith("synth"):
        info["data"].update(pool_size=args.pool_size, world_seed=args.world_seed)
    save_diffews(model.cpu(), out, info, dtype=getattr(torch, args.save_dtype))
    print(f"done: {out} ({previous + elapsed:.0f} s of training)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
