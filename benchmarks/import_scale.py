"""`train.import_diffews` at SD 2.1 size: wall time and peak memory per weight layout, weights checked.

    python -m benchmarks.import_scale --work /tmp/import-scale --out benchmarks/results/import-scale

No released checkpoint is available here, so this writes one of the same size and layout: the SD
2.1 UNet architecture with seeded random weights, `conv_in_ref` attached the way the authors'
conversion script attaches it, saved with `unet.save_pretrained` as safetensors and as a torch
pickle (`.bin`). The base beside it has SD 2.1's VAE and a text encoder of SD 2.1's size (OpenCLIP
ViT-H's text tower: 1024 wide, 23 layers), random, with the toolkit's word tokenizer in place of
CLIP's BPE (the tokenizer only has to turn "" into BOS, EOS). Each import runs in its own process;
its peak resident set is that process's `ru_maxrss`. Afterwards every imported tensor is compared
with the source's, bit for bit. The figures say what an import costs; they say nothing about the
released weights' masks, which were never run here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

LAYOUTS = {"safetensors": {"safe_serialization": True}, "bin": {"safe_serialization": False}}
# SD 2.1's text_encoder/config.json (OpenCLIP ViT-H/14 text tower, as diffusers stores it).
SD21_TEXT_ENCODER = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, projection_dim=512, hidden_act="gelu",
)  # fmt: skip


def write_release(work: Path, layouts: list[str]) -> dict[str, Path]:
    """The SD 2.1-sized base and checkpoint folders under `work` (reused when already there)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from modeling import configs
    from modeling.tokenizer import build_word_tokenizer

    base = work / "stable-diffusion-2-1"
    if not (base / "tokenizer").is_dir():
        torch.manual_seed(0)
        AutoencoderKL(**configs.SD21_VAE).save_pretrained(base / "vae")
        tokenizer = build_word_tokenizer()
        CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **SD21_TEXT_ENCODER)).save_pretrained(
            base / "text_encoder"
        )
        tokenizer.save_pretrained(base / "tokenizer")
    checkpoints = {layout: work / layout / "checkpoint-2000" / "unet" for layout in layouts}
    if all((path / "config.json").is_file() for path in checkpoints.values()):
        return {"base": base, **checkpoints}
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**configs.SD21_UNET)
    conv_in = unet.conv_in
    unet.conv_in_ref = torch.nn.Conv2d(8, conv_in.out_channels, 3, padding=1)  # as their conversion script
    with torch.no_grad():
        unet.conv_in_ref.weight.copy_(conv_in.weight.repeat(1, 2, 1, 1) / 2)
        unet.conv_in_ref.bias.copy_(conv_in.bias)
    for layout, path in checkpoints.items():
        if not (path / "config.json").is_file():
            unet.save_pretrained(path, **LAYOUTS[layout])
    return {"base": base, **checkpoints}


def timed_import(unet: Path, base: Path, out: Path) -> dict:
    """Runs the import CLI in a child process: its wall time, peak resident set and exit status."""
    command = [sys.executable, "-m", "train.import_diffews", "--unet", str(unet), "--base", str(base),
               "--out", str(out), "--overwrite"]  # fmt: skip
    log = out.with_name(out.name + ".log")  # to a file, not a pipe: a pipe nobody reads can fill and block the child
    start = time.perf_counter()
    with open(log, "wb") as stderr:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: the import of {unet} failed:\n{log.read_text(errors='replace')[-2000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2)}


def same_weights(source: Path, imported: Path) -> int:
    """Number of tensors compared; raises SystemExit at the first that differs."""
    from modeling.checkpoint_files import read_state_dict

    want, _ = read_state_dict(source)
    got, _ = read_state_dict(imported / "unet")
    if set(want) != set(got):
        raise SystemExit(f"error: tensor names differ: {sorted(set(want) ^ set(got))[:5]}")
    for name, tensor in want.items():
        if not torch.equal(tensor, got[name]):
            raise SystemExit(f"error: {name} differs after the import")
    return len(want)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (about 11 GB for both layouts)")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--layouts", nargs="+", choices=tuple(LAYOUTS), default=list(LAYOUTS))
    args = parser.parse_args(argv)
    paths = write_release(args.work, args.layouts)
    rows = []
    for layout in args.layouts:
        imported = args.work / f"imported-{layout}"
        row = {
            "layout": layout,
            "checkpoint_gb": round(sum(p.stat().st_size for p in paths[layout].iterdir()) / 1e9, 2),
        }
        row.update(timed_import(paths[layout], paths["base"], imported))
        row["tensors_identical"] = same_weights(paths[layout], imported)
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    lines = [
        "| layout | checkpoint (GB) | wall (s) | peak RSS (GB) | tensors identical |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['layout']} | {r['checkpoint_gb']} | {r['wall_s']} | {r['peak_rss_gb']} | {r['tensors_identical']} |"
        for r in rows
    ]
    (args.out / "results.md").write_text(
        "# train.import_diffews at SD 2.1 size (random weights)\n\n"
        f"Command: `python -m benchmarks.import_scale --work WORK --out {args.out}`\n\n" + "\n".join(lines) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
