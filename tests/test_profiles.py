"""Profiles: which read-out and query encoder a build gets, what the manifest records, what `auto` runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from export.profile_parts import choose_parts
from runtime.profiles import PROFILES, allows_reduced_precision, profile_named
from runtime.sections import DiffewsSection, FusedLayer, Readout


def model(*parts: str) -> SimpleNamespace:
    """A stand-in for a DiffewsModel holding the learned networks named (mask_head, mask_decoder, query_encoder)."""
    names = ("mask_head", "mask_decoder", "query_encoder")
    return SimpleNamespace(**{name: (object() if name in parts else None) for name in names})


def test_each_profile_gets_its_parts_from_a_model_that_has_them():
    full = model("mask_head", "mask_decoder", "query_encoder")
    for name, profile in PROFILES.items():
        assert choose_parts(name, "auto", "auto", full) == (profile.readout, profile.query_encoder, name)


def test_default_falls_back_to_the_vae_and_says_so_in_the_record():
    assert choose_parts("default", "auto", "auto", model()) == ("vae", "vae", "custom")
    assert choose_parts("exact", "auto", "auto", model()) == ("vae", "vae", "exact")  # needs nothing learned


def test_fast_refuses_a_model_without_its_networks():
    with pytest.raises(ValueError, match=r"no query_encoder/ \(profile fast needs it\).*train\.query_encoder"):
        choose_parts("fast", "auto", "auto", model("mask_decoder"))
    with pytest.raises(ValueError, match=r"mask_decoder/.*--kind mask_decoder"):
        choose_parts("fast", "auto", "auto", model("query_encoder"))


def test_a_part_named_overrides_the_profile_and_the_build_is_custom():
    full = model("mask_head", "mask_decoder", "query_encoder")
    assert choose_parts("default", "auto", "distilled", full) == ("mask_head", "distilled", "custom")
    assert choose_parts("fast", "mask_decoder", "distilled", full) == ("mask_decoder", "distilled", "fast")
    with pytest.raises(ValueError, match=r"no mask_head/ \(mask_head was asked for\)"):
        choose_parts("exact", "mask_head", "auto", model())
    with pytest.raises(ValueError, match="profile must be one of exact, default, fast"):
        choose_parts("quick", "auto", "auto", full)
    with pytest.raises(ValueError, match="query_encoder must be auto or one of vae, distilled"):
        choose_parts("default", "auto", "taesd", full)


def test_only_exact_keeps_auto_off_bf16_and_old_manifests_read_as_custom():
    assert [name for name in PROFILES if not allows_reduced_precision(name)] == ["exact"]
    assert allows_reduced_precision("custom") and profile_named("custom") is None
    section = DiffewsSection(
        Readout("relative", 0.25), 1, (FusedLayer("a", 4, 8),), query_encoder="distilled", profile="fast"
    )
    data = section.to_json()
    assert DiffewsSection.from_json(data) == section
    del data["profile"], data["query_encoder"]  # a manifest written before either existed
    old = DiffewsSection.from_json(data)
    assert (old.profile, old.query_encoder) == ("custom", "vae")
