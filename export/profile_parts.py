"""A build's query-graph parts (read-out, query encoder) from its profile and explicit choices.

    readout, encoder, profile = choose_parts("default", "auto", "auto", model)

`auto` takes the profile's part; a part the model lacks is an error, except under a profile that
falls back (`default`: the VAE's where there is no mask head). A build whose parts differ from
its profile's is recorded as `custom` (`runtime.profiles`).
"""

from __future__ import annotations

from modeling.diffews import DiffewsModel
from modeling.query_encoders import TRAIN_COMMAND as QUERY_ENCODER_TRAINING
from runtime.profiles import CUSTOM, PROFILES
from runtime.sections import QUERY_ENCODERS, READOUTS

MODEL_ATTRIBUTE = {"mask_head": "mask_head", "mask_decoder": "mask_decoder", "distilled": "query_encoder"}
TRAINING = {
    "mask_head": "python -m train.mask_decoder --model DIR --kind mask_head",
    "mask_decoder": "python -m train.mask_decoder --model DIR --kind mask_decoder",
    "distilled": QUERY_ENCODER_TRAINING,
}
FOLDERS = {"mask_head": "mask_head/", "mask_decoder": "mask_decoder/", "distilled": "query_encoder/"}


def check_part_names(profile: str, readout: str, query_encoder: str) -> None:
    """ValueError naming the first unknown profile or part (before anything slow is loaded)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if readout not in ("auto", *READOUTS):
        raise ValueError(f"readout must be auto or one of {', '.join(READOUTS)}, got {readout!r}")
    if query_encoder not in ("auto", *QUERY_ENCODERS):
        raise ValueError(f"query_encoder must be auto or one of {', '.join(QUERY_ENCODERS)}, got {query_encoder!r}")


def _has(model: DiffewsModel, part: str) -> bool:
    return part == "vae" or getattr(model, MODEL_ATTRIBUTE[part]) is not None


def choose_parts(profile: str, readout: str, query_encoder: str, model: DiffewsModel) -> tuple[str, str, str]:
    """(read-out, query encoder, the profile name the manifest records).

    Raises:
        ValueError when the model lacks a part asked for by name, or by a strict profile.
    """
    check_part_names(profile, readout, query_encoder)
    chosen = PROFILES[profile]
    parts = []
    for asked, wanted in ((readout, chosen.readout), (query_encoder, chosen.query_encoder)):
        part = wanted if asked == "auto" else asked
        if not _has(model, part):
            if asked == "auto" and not chosen.strict:
                part = "vae"  # the method's own, as --readout auto always did for a model without a head
            else:
                why = f"profile {profile} needs it" if asked == "auto" else f"{part} was asked for"
                raise ValueError(f"the model has no {FOLDERS[part]} ({why}); train one with {TRAINING[part]}")
        parts.append(part)
    recorded = profile if (parts[0], parts[1]) == (chosen.readout, chosen.query_encoder) else CUSTOM
    return parts[0], parts[1], recorded
