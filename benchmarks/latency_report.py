"""The latency benchmark's table: rows assembled from the measured stages, as JSON, markdown and a plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.files import replacing_file

STAGES = ("support", "query_encode", "query_unet", "readout", "io")
# manifest read-out -> (the PyTorch stage its FLOPs come from, the row name's suffix)
READOUT_ROWS = {
    "vae": ("readout", ""),
    "mask_head": ("readout_mask_head", ", mask_head read-out"),
    "mask_decoder": ("readout_mask_decoder", ", mask_decoder read-out"),
}
# manifest query encoder -> (the PyTorch stage its FLOPs come from, the row name's suffix)
ENCODER_ROWS = {"vae": ("query_encode", ""), "distilled": ("query_encode_distilled", ", distilled encoder")}


def _row(
    name: str, stages: dict, once: float, flops: float, reference_ms: float, peak: float, memory_mb: float
) -> dict:
    total = sum(stages.values())
    return {
        "row": name,
        "stages_ms": stages,
        "peak_extra_mb": memory_mb,
        "query_ms": total,
        "support_once_ms": once,
        "speedup_vs_reference": reference_ms / total,
        "gflop_per_query": flops / 1e9,
        "fraction_of_peak": flops / 1e9 / (total / 1000) / peak,
    }


def _block_suffix(runtime: dict, runtimes: list[dict]) -> str:
    """Names the attention blocks of a row's engines where the run has engines of different blocks."""
    blocks = {r.get("attention_block", 0) for r in runtimes}  # results from before blocks: unblocked
    if len(blocks) == 1:
        return ""
    block = runtime.get("attention_block", 0)
    return f", attention in blocks of {block}" if block else ", attention unblocked"


def assemble(torch_ms: dict, torch_flops: dict, torch_mb: dict, runtimes: list[dict], peak: float) -> list[dict]:
    """The table's rows: per-stage medians, per-query totals, ratios to `reference`, FLOP use, peak memory.

    Args:
        torch_mb: peak extra resident memory per PyTorch stage; a row's figure is its largest stage.
        runtimes: per engine directory and backend, `measure_runtime`'s result (with its "backend",
            "decoder" ("vae", "mask_head" or "mask_decoder"), "query_encoder" ("vae" or "distilled") and
            "attention_block", named in the rows where engines of several blocks were measured).
    """

    def median(t):
        return t["median_ms"]

    query_stages = {s: median(torch_ms[s]) for s in ("query_encode", "query_unet", "readout")}
    reference = {"support": median(torch_ms["support_full"]), **query_stages, "io": 0.0}
    query_flops = torch_flops["query_encode"] + torch_flops["query_unet"]
    reference_ms = sum(reference.values())
    rows = [
        _row(
            "reference",
            reference,
            0.0,
            torch_flops["support_full"] + query_flops + torch_flops["readout"],
            reference_ms,
            peak,
            max(torch_mb[s] for s in ("support_full", "query_encode", "query_unet", "readout")),
        ),
        _row(
            "torch-cached",
            {**reference, "support": 0.0},
            median(torch_ms["support_cached"]),
            query_flops + torch_flops["readout"],
            reference_ms,
            peak,
            max(torch_mb[s] for s in ("query_encode", "query_unet", "readout")),
        ),
    ]
    rows[0]["spread_ms"] = {s: torch_ms[s] for s in ("support_full", "query_encode", "query_unet", "readout")}
    for runtime in runtimes:
        query = median(runtime["query"])
        stages = {"support": 0.0, **{s: query * share for s, share in runtime["split"].items()}}
        stage, suffix = READOUT_ROWS[runtime["decoder"]]
        encode_stage, encode_suffix = ENCODER_ROWS[runtime.get("query_encoder", "vae")]
        flops = torch_flops[encode_stage] + torch_flops["query_unet"] + torch_flops[stage]
        name = runtime["backend"] + suffix + encode_suffix + _block_suffix(runtime, runtimes)
        once, memory = median(runtime["support"]), runtime["query"]["peak_extra_mb"]
        rows.append(_row(name, stages, once, flops, reference_ms, peak, memory))
        rows[-1]["spread_ms"] = {"support": runtime["support"], "query": runtime["query"]}
        rows[-1]["engines"], rows[-1]["backend"] = runtime["engines"], runtime["backend"]
    return rows


def markdown(result: dict) -> str:
    lines = [
        f"Model: {result['model']} at {result['resolution']} px, 1 shot, {result['threads']} threads; "
        f"medians of {result['repeats']} after warm-up; fp32 matmul peak {result['peak_gflops']:.0f} GFLOP/s.",
        # results from before `runtime_process` was recorded were all measured in the benchmark's process
        f"Runtime rows measured in {result.get('runtime_process', 'the benchmark process, after the PyTorch rows')}.",
        "",
        "| row | support ms | query encode ms | query UNet ms | read-out ms | io ms | ms per query | speed-up | "
        "GFLOP per query | % of matmul peak | support once ms | peak MB per query |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        s = r["stages_ms"]
        lines.append(
            f"| {r['row']} | {s['support']:.0f} | {s['query_encode']:.0f} | {s['query_unet']:.0f} | "
            f"{s['readout']:.0f} | {s['io']:.0f} | **{r['query_ms']:.0f}** | {r['speedup_vs_reference']:.2f}x | "
            f"{r['gflop_per_query']:.1f} | {100 * r['fraction_of_peak']:.0f} % | {r['support_once_ms']:.0f} | "
            f"{r['peak_extra_mb']:.0f} |"
        )
    spread = [r for r in result["rows"] if "query" in r.get("spread_ms", {})]
    if spread:
        lines += [
            "",
            f"Spread of the runtime rows' query graph over {result['repeats']} calls (ms):",
            "",
            "| row | p50 | p90 | max | max / p50 |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in spread:
            q = r["spread_ms"]["query"]
            p90 = f"{q['p90_ms']:.0f}" if "p90_ms" in q else "-"  # results written before p90 was kept
            lines.append(
                f"| {r['row']} | {q['median_ms']:.0f} | {p90} | {q['max_ms']:.0f} | {q['max_ms'] / q['median_ms']:.2f} |"
            )
    machine = result.get("machine")
    if machine:
        lines += [
            "",
            f"Machine: {machine['cpu']}, ISA features {', '.join(machine['isa_features']) or 'none listed'}, "
            f"{machine['threads']} threads; " + ", ".join(f"{k} {v}" for k, v in machine["libraries"].items()) + ".",
        ]
    memory = result.get("peak_memory_mb")
    if memory:
        lines += [
            "",
            "Peak memory per stage, MB of resident memory above the process's level when the stage starts "
            "(weights already loaded):",
            "",
            "| stage | MB |",
            "| --- | --- |",
        ]
        lines += [f"| torch {stage} | {mb:.0f} |" for stage, mb in memory["torch"].items()]
        for engines, graphs in memory["runtime"].items():
            lines += [f"| runtime {graph} ({engines}) | {mb:.0f} |" for graph, mb in graphs.items()]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Stacked bars: each row's per-query time by stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.6 * len(rows)))
    left = np.zeros(len(rows))
    for stage in STAGES:
        widths = np.array([r["stages_ms"][stage] for r in rows]) / 1000
        ax.barh([r["row"] for r in rows], widths, left=left, label=stage)
        left += widths
    ax.invert_yaxis()
    ax.set_xlabel("seconds per query")
    ax.set_title(f"DiffewS latency per query, {Path(result['model']).name} at {result['resolution']} px")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with replacing_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
