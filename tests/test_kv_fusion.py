"""KV-fusion self-attention: layer selection, equivalences with plain attention, the bank's contract."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor

from modeling import configs, kv_fusion
from modeling.kv_fusion import KVBank, KVFusion, KVFusionProcessor, fused_layer_names


@pytest.fixture()
def unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(**configs.TINY_UNET).eval()


def _inputs(batch: int = 1, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.randn(batch, 77, 32, generator=g)


def test_sd21_config_fuses_exactly_its_16_self_attention_layers():
    with torch.device("meta"):  # the real architecture without allocating 3.5 GB
        unet = UNet2DConditionModel(**configs.SD21_UNET)
    before = dict(unet.attn_processors)
    fusion = KVFusion(unet)
    after = unet.attn_processors
    assert len(fusion.layer_names) == 16
    stages = [n.split(".")[0] for n in fusion.layer_names]
    assert stages.count("down_blocks") == 6 and stages.count("mid_block") == 1 and stages.count("up_blocks") == 9
    assert all(n.endswith("attn1.processor") for n in fusion.layer_names)
    for name, processor in after.items():
        if name in fusion.layer_names:
            assert isinstance(processor, KVFusionProcessor)
        else:
            assert name.endswith("attn2.processor") and processor is before[name]  # cross-attention untouched


def test_synth_config_has_the_same_fused_layer_paths_as_sd21():
    with torch.device("meta"):
        sd21 = UNet2DConditionModel(**configs.SD21_UNET)
        synth = UNet2DConditionModel(**configs.SYNTH_UNET)
    assert fused_layer_names(synth) == fused_layer_names(sd21)


@pytest.mark.parametrize("implementation", ["sdpa", "matmul"])
def test_empty_bank_gives_diffusers_attn_processor_output(unet, implementation):
    z, context = _inputs(batch=2)
    reference = copy.deepcopy(unet)
    reference.set_attn_processor(AttnProcessor())
    with torch.no_grad():
        expected = reference(z, 1, encoder_hidden_states=context).sample
        KVFusion(unet, implementation)
        got = unet(z, 1, encoder_hidden_states=context).sample
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_sdpa_and_matmul_implementations_agree_with_a_bank(unet):
    z, context = _inputs(batch=2)
    support = torch.randn(4, 4, 8, 8)
    outputs = []
    for implementation in ("sdpa", "matmul"):
        model = copy.deepcopy(unet)
        fusion = KVFusion(model, implementation)
        with torch.no_grad():
            bank = fusion.record_bank(lambda m=model: m(support, 1, encoder_hidden_states=context.repeat(2, 1, 1)), 2)
            with fusion.reading(bank):
                outputs.append(model(z, 1, encoder_hidden_states=context).sample)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


def test_support_tokens_equal_to_the_query_give_plain_self_attention(unet):
    """Keys and values duplicated leave every softmax unchanged, so fused == plain at every layer."""
    z, context = _inputs()
    fusion = KVFusion(unet, "matmul")
    with torch.no_grad():
        plain = unet(z, 1, encoder_hidden_states=context).sample
        bank = fusion.record_bank(lambda: unet(z, 1, encoder_hidden_states=context), shots=1)
        with fusion.reading(bank):
            fused = unet(z, 1, encoder_hidden_states=context).sample
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    assert not torch.equal(bank.keys[fusion.layer_names[0]], torch.zeros_like(bank.keys[fusion.layer_names[0]]))


def test_bank_shapes_order_and_stop_early(unet):
    context = _inputs()[1]
    fusion = KVFusion(unet)
    supports = torch.randn(2 * 3, 4, 8, 8)  # 2 episodes x 3 shots, episode-major
    with torch.no_grad():
        bank = fusion.record_bank(lambda: unet(supports, 1, encoder_hidden_states=context.repeat(6, 1, 1)), 3)
        full = fusion.record_bank(lambda: unet(supports, 1, encoder_hidden_states=context.repeat(6, 1, 1)), 3, False)
        singles = [
            fusion.record_bank(lambda i=i: unet(supports[i : i + 1], 1, encoder_hidden_states=context), 1)
            for i in range(6)
        ]
    first = fusion.layer_names[0]
    tokens = 8 * 8  # down_blocks.0 runs at the latent size
    assert bank.keys[first].shape == (2, 3 * tokens, unet.config.block_out_channels[0]) and bank.shots == 3
    for name in fusion.layer_names:
        torch.testing.assert_close(bank.keys[name], full.keys[name])
        # episode 1's bank = its three single-shot banks joined on the token axis, in shot order
        joined = KVBank.concat(singles[3:6])
        torch.testing.assert_close(bank.keys[name][1:2], joined.keys[name], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bank.values[name][1:2], joined.values[name], rtol=1e-4, atol=1e-5)


def test_query_reads_own_tokens_first_then_supports_in_order(unet, monkeypatch):
    z, context = _inputs()
    fusion = KVFusion(unet)
    with torch.no_grad():
        shots = [
            fusion.record_bank(lambda i=i: unet(torch.randn(1, 4, 8, 8), 1, encoder_hidden_states=context), 1)
            for i in range(2)
        ]
        plain_keys = fusion.record_bank(lambda: unet(z, 1, encoder_hidden_states=context), 1)
    seen = {}
    real_attention = kv_fusion.attention

    def spy(attn, query, key, value, implementation, **options):
        seen.setdefault("key", key)
        return real_attention(attn, query, key, value, implementation, **options)

    monkeypatch.setattr(kv_fusion, "attention", spy)
    with torch.no_grad(), fusion.reading(KVBank.concat(shots)):
        unet(z, 1, encoder_hidden_states=context)
    first, n = fusion.layer_names[0], 64
    key = seen["key"]
    assert key.shape[1] == 3 * n
    torch.testing.assert_close(key[:, :n], plain_keys.keys[first])  # the query's own tokens first
    torch.testing.assert_close(key[:, n : 2 * n], shots[0].keys[first])
    torch.testing.assert_close(key[:, 2 * n :], shots[1].keys[first])


def test_each_query_of_a_batch_reads_its_own_episode(unet):
    context = _inputs()[1]
    fusion = KVFusion(unet)
    supports, queries = torch.randn(2, 2, 4, 8, 8), torch.randn(2, 4, 8, 8)

    def run(s, q):
        b = len(q)
        bank = fusion.record_bank(
            lambda: unet(s.flatten(0, 1), 1, encoder_hidden_states=context.repeat(s.shape[0] * s.shape[1], 1, 1)),
            s.shape[1],
        )
        with fusion.reading(bank):
            return unet(q, 1, encoder_hidden_states=context.repeat(b, 1, 1)).sample

    with torch.no_grad():
        batched = run(supports, queries)
        separate = torch.cat([run(supports[i : i + 1], queries[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-5)


def test_bank_is_not_changed_by_queries(unet):
    z, context = _inputs()
    fusion = KVFusion(unet)
    with torch.no_grad():
        bank = fusion.record_bank(lambda: unet(torch.randn(1, 4, 8, 8), 1, encoder_hidden_states=context), 1)
        before = bank.map(torch.clone)
        outs = []
        for seed in (1, 2):
            with fusion.reading(bank):
                outs.append(unet(_inputs(seed=seed)[0], 1, encoder_hidden_states=context).sample)
    assert not torch.allclose(outs[0], outs[1])
    for name in fusion.layer_names:
        assert torch.equal(bank.keys[name], before.keys[name]) and torch.equal(bank.values[name], before.values[name])


def test_mismatched_banks_are_refused(unet):
    context = _inputs()[1]
    fusion = KVFusion(unet)
    with torch.no_grad():
        bank = fusion.record_bank(
            lambda: unet(torch.randn(2, 4, 8, 8), 1, encoder_hidden_states=context.repeat(2, 1, 1)), 1
        )
    with pytest.raises(ValueError, match="query batch"), torch.no_grad(), fusion.reading(bank):
        unet(torch.randn(3, 4, 8, 8), 1, encoder_hidden_states=context.repeat(3, 1, 1))
    foreign = KVBank({"other.attn1.processor": torch.zeros(1)}, {"other.attn1.processor": torch.zeros(1)}, 1)
    with pytest.raises(ValueError, match="another model"):
        fusion.reading(foreign)
    with pytest.raises(ValueError, match="implementation"):
        KVFusion(unet, "flash")


@pytest.mark.parametrize("implementation", ["sdpa", "matmul"])
def test_upcast_attention_as_sd21_sets_it_matches_diffusers_in_half_precision(implementation):
    """SD 2.1 builds its UNet with upcast_attention=True: Q K^T and the softmax stay fp32 under bf16."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**configs.TINY_UNET, "upcast_attention": True}).eval().to(torch.bfloat16)
    assert all(m.upcast_attention for n, m in unet.named_modules() if n.endswith("attn1"))
    z, context = (t.to(torch.bfloat16) for t in _inputs(batch=2))
    reference = copy.deepcopy(unet)
    reference.set_attn_processor(AttnProcessor())
    with torch.no_grad():
        expected = reference(z, 1, encoder_hidden_states=context).sample.float()
        fusion = KVFusion(unet, implementation)
        got = unet(z, 1, encoder_hidden_states=context).sample.float()
        bank = fusion.record_bank(lambda: unet(z, 1, encoder_hidden_states=context), 1)
        with fusion.reading(bank):
            fused = unet(z, 1, encoder_hidden_states=context).sample
    assert fused.dtype == torch.bfloat16 and torch.isfinite(fused.float()).all()
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


def test_processors_survive_a_round_trip_through_set_attn_processor(unet):
    """What `attn_processors` hands out can be set back (as diffusers' own save / restore code does)."""
    z, context = _inputs(batch=1)
    fusion = KVFusion(unet)
    support = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        bank = fusion.record_bank(lambda: unet(support, 1, encoder_hidden_states=context), 1)
        with fusion.reading(bank):
            before = unet(z, 1, encoder_hidden_states=context).sample
        saved = dict(unet.attn_processors)
        unet.set_attn_processor(AttnProcessor())
        plain = unet(z, 1, encoder_hidden_states=context).sample
        unet.set_attn_processor(saved)
        assert all(isinstance(unet.attn_processors[n], KVFusionProcessor) for n in fusion.layer_names)
        with fusion.reading(bank):
            after = unet(z, 1, encoder_hidden_states=context).sample
    torch.testing.assert_close(after, before)
    assert not torch.allclose(plain, before)  # the bank mattered, so the round trip was tested


def test_attention_in_query_blocks_gives_the_unblocked_result(unet, monkeypatch):
    """Blocks of 24 of the 64 queries at the latent size (24, 24, 16): the same support bank and query output."""
    z, context = _inputs(batch=2)
    support = torch.randn(2, 4, 8, 8)
    block_calls = []
    real_block = kv_fusion._matmul_attention

    def counting(attn, q, k, v, **options):
        block_calls.append(q.shape[2])
        return real_block(attn, q, k, v, **options)

    monkeypatch.setattr(kv_fusion, "_matmul_attention", counting)
    results = {}
    calls = {}
    for implementation, block in (("sdpa", 0), ("matmul", 0), ("matmul", 24)):
        block_calls.clear()
        net = copy.deepcopy(unet)
        fusion = KVFusion(net, implementation, query_block=block)
        with torch.no_grad():
            bank = fusion.record_bank(lambda net=net: net(support, 1, encoder_hidden_states=context), 1)
            with fusion.reading(bank):
                results[(implementation, block)] = (bank, net(z, 1, encoder_hidden_states=context).sample)
        calls[(implementation, block)] = set(block_calls)
    assert not calls[("sdpa", 0)] and 64 in calls[("matmul", 0)]
    assert 64 not in calls[("matmul", 24)] and 24 in calls[("matmul", 24)]  # the 64-query layers ran in blocks
    reference_bank, reference = results[("sdpa", 0)]
    for key in (("matmul", 0), ("matmul", 24)):
        bank, out = results[key]
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
        for name in reference_bank.layer_names:
            torch.testing.assert_close(bank.keys[name], reference_bank.keys[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", [-1, 2.5, True, "256"])
def test_a_bad_query_block_is_refused(unet, block):
    with pytest.raises(ValueError, match="query block"):
        KVFusion(unet, "matmul", query_block=block)
