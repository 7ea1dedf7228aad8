"""Profiles: named trade-offs between exact masks and speed, chosen at build time and kept in `manifest.json`.

| profile | read-out | query encoder | `backend="auto"` may use bf16 | what it is for |
| --- | --- | --- | --- | --- |
| `exact` | `vae` | `vae` | no: fp32 throughout | the PyTorch pipeline's masks (agreement 1.000) |
| `default` | `mask_head` | `vae` | yes | agreement at least 0.98 at every size measured |
| `fast` | `mask_decoder` | `distilled` | yes | the cheapest build whose held-out mIoU stays within a point of the exact one |

A profile names learned networks the model folder must hold (`mask_head/`, `mask_decoder/`,
`query_encoder/`). `default` falls back to the method's own VAE decoder where a model has no mask
head (an imported release), as `--readout auto` always did; `fast` refuses a model that lacks its
networks, since without them it would not be fast. A build that overrides a profile's part
(`--readout`, `--query-encoder`) is recorded as `custom`. docs/diffews.md has each profile's
measured agreement, mIoU and latency.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    readout: str  # runtime.sections.READOUTS
    query_encoder: str  # runtime.sections.QUERY_ENCODERS
    reduced_precision: bool  # whether `backend="auto"` may pick a bf16 backend for the per-query graphs
    strict: bool  # refuse a model that lacks the profile's networks (else fall back to the VAE's)


PROFILES = {
    "exact": Profile("exact", "vae", "vae", reduced_precision=False, strict=True),
    "default": Profile("default", "mask_head", "vae", reduced_precision=True, strict=False),
    "fast": Profile("fast", "mask_decoder", "distilled", reduced_precision=True, strict=True),
}
DEFAULT_PROFILE = "default"
CUSTOM = "custom"  # a build whose parts are not one profile's


def profile_named(name: str) -> Profile | None:
    """The profile `name`; None for `custom`; ValueError for anything else."""
    if name == CUSTOM:
        return None
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


def allows_reduced_precision(name: str) -> bool:
    """Whether `backend="auto"` may run an engine directory of this profile in bf16 (`custom`: yes, as before profiles)."""
    profile = profile_named(name)
    return True if profile is None else profile.reduced_precision
