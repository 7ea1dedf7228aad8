"""KV-fusion self-attention (DiffewS's FSA), injected into a diffusers UNet through attention processors.

Every self-attention layer (`attn1` of each `BasicTransformerBlock`; all 16 of SD 2.1) gets a
`KVFusionProcessor`; cross-attention (`attn2`) keeps its processor. One `KVFusion` controller,
shared by the processors, says what a forward pass does:

  * "plain": ordinary self-attention (the base model's behaviour);
  * "record": the support stream. Plain self-attention over the support's own tokens, and each
    layer's K and V (after `to_k` / `to_v`, before the head split) are kept in a `KVBank`;
  * "read": the query stream. Q comes from the query alone; K and V are the query's own tokens
    followed by its episode's support tokens, shot after shot (paper Eq. 8). The query's K/V
    are never written to the bank, so one bank serves any number of queries.

It is KV fusion, not QKV: support tokens never attend to the query, so the bank is a pure
function of (support image, support mask, weights) and can be cached, exported as its own graph
and reused. Two implementations of the attention product are selectable: "sdpa"
(`F.scaled_dot_product_attention`, fastest in training) and "matmul" (explicit
MatMul-Softmax-MatMul, the pattern ONNX Runtime and TensorRT fuse); a test shows them equal.
"matmul" can also run the queries in blocks (`query_block`): the same attention, since each
query's softmax is its own, but the exported graph then writes one block's scores at a time
instead of all of them (5 x 4096 x 8192 at SD 2.1's largest layer with one shot), which stay in
the CPU's cache (`export.build_engine --attention-block`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock

from runtime.support_selection import SupportSelection, layer_grid

ATTENTION_IMPLEMENTATIONS = ("sdpa", "matmul")
MODES = ("plain", "record", "read")


@dataclass
class KVBank:
    """Support keys and values of every fused layer, grouped by query episode.

    Attributes:
        keys, values: layer name -> (B, S * N_l, C_l): B episodes, S shots, N_l tokens of layer l
            (h_l * w_l), C_l its channels (heads x head dim). Shot s holds tokens
            [s * N_l, (s + 1) * N_l).
        shots: S.
    """

    keys: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    shots: int

    @property
    def layer_names(self) -> list[str]:
        return list(self.keys)

    @property
    def batch_size(self) -> int:
        return next(iter(self.keys.values())).shape[0]

    @classmethod
    def concat(cls, banks: list[KVBank]) -> KVBank:
        """Joins banks of the same episodes along the token axis: shots of banks[0] first, then banks[1]...

        The n-shot bank of supports (s1..sn) equals the concatenation of their single-shot banks.
        """
        if not banks:
            raise ValueError("concat needs at least one bank")
        names = banks[0].layer_names
        for bank in banks[1:]:
            if bank.layer_names != names:
                raise ValueError("banks come from models with different fused layers; build them with one model")
        return cls(
            keys={n: torch.cat([b.keys[n] for b in banks], dim=1) for n in names},
            values={n: torch.cat([b.values[n] for b in banks], dim=1) for n in names},
            shots=sum(b.shots for b in banks),
        )

    def select(self, selection: SupportSelection, masks: Sequence[Sequence[np.ndarray]]) -> KVBank:
        """The bank reduced as `selection` says (`runtime.support_selection`), the runtime's tokens in its order.

        Args:
            masks: per episode, its S support masks (H, W), foreground non-zero.
        Returns:
            keys / values (B, K * N_l, C_l) with K = selection.bank_shots(S); this bank when not reduced.
        """
        if not selection.reduces(self.shots):
            return self
        if len(masks) != self.batch_size:
            raise ValueError(f"the bank holds {self.batch_size} episodes but masks of {len(masks)} were given")
        keep = {}
        for name, key in self.keys.items():
            grid = layer_grid(key.shape[1] // self.shots)
            rows = [torch.as_tensor(selection.indices(episode, grid), device=key.device) for episode in masks]
            keep[name] = torch.stack(rows)  # [B, K * N_l]

        def pick(name: str, tensor: torch.Tensor) -> torch.Tensor:
            index = keep[name][..., None].expand(-1, -1, tensor.shape[-1])
            return torch.gather(tensor, 1, index)

        return KVBank(
            {n: pick(n, t) for n, t in self.keys.items()},
            {n: pick(n, t) for n, t in self.values.items()},
            selection.budget_shots,
        )

    def map(self, fn) -> KVBank:
        """A bank with `fn` applied to every tensor (e.g. `lambda t: t.detach()`)."""
        return KVBank({n: fn(t) for n, t in self.keys.items()}, {n: fn(t) for n, t in self.values.items()}, self.shots)


def check_query_block(query_block: int) -> int:
    """The queries per attention block, 0 (unblocked) or a positive integer."""
    if isinstance(query_block, bool) or not isinstance(query_block, int) or query_block < 0:
        raise ValueError(
            f"the attention's query block must be 0 (all queries at once) or a positive integer, got {query_block!r}"
        )
    return query_block


class _BankComplete(Exception):
    """Raised after the last fused layer has recorded, to skip the rest of the support stream."""


_STAGE_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}  # diffusers registers mid_block last


def fused_layer_names(unet: UNet2DConditionModel) -> list[str]:
    """Processor names of every self-attention layer, in execution order (down, mid, up)."""
    names = [
        f"{name}.attn1.processor"
        for name, module in unet.named_modules()
        if isinstance(module, BasicTransformerBlock) and not module.only_cross_attention
    ]
    return sorted(names, key=lambda n: _STAGE_ORDER.get(n.split(".")[0], 3))  # stable within a stage


def attention(
    attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, implementation: str, query_block: int = 0
) -> torch.Tensor:
    """Multi-head attention of (B, Nq, C) queries over (B, Nk, C) keys and values -> (B, Nq, C).

    Uses the layer's heads, softmax scale (1 / sqrt(head dim)) and its upcast flags (SD 2.1 sets
    `upcast_attention`, which keeps Q K^T and the softmax in fp32 under half precision).
    query_block: "matmul" only: queries per block (0: all at once). Applied where Nq is a fixed
    number larger than the block (always inside the exported graphs, which resize to the model
    resolution first); a symbolic Nq runs unblocked rather than make the export guard on it.
    """
    b, n_q, c = query.shape
    heads = attn.heads
    q, k, v = (t.view(b, -1, heads, c // heads).transpose(1, 2) for t in (query, key, value))  # [B, H, N, d]
    dtype = q.dtype
    if implementation == "sdpa":
        if attn.upcast_attention or attn.upcast_softmax:
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    elif implementation == "matmul":
        if attn.upcast_attention:
            q, k = q.float(), k.float()
        n = q.shape[2]
        if query_block and isinstance(n, int) and n > query_block:
            # Scaled once on the queries: OpenVINO moves a scale after Q K^T onto K, which every block
            # would then scale again (seen as PowerStatic nodes in benchmarks.openvino_ops).
            blocks = (q * attn.scale).split(query_block, dim=2)
            out = torch.cat([_matmul_attention(attn, block, k, v, scaled=True) for block in blocks], dim=2)
        else:
            out = _matmul_attention(attn, q, k, v)
    else:
        raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {implementation!r}")
    return out.to(dtype).transpose(1, 2).reshape(b, n_q, c)


def _matmul_attention(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaled: bool = False) -> torch.Tensor:
    """softmax(q k^T * scale) v for [B, H, n, d] queries and [B, H, Nk, d] keys and values -> [B, H, n, d].

    scaled: q already carries the layer's scale.
    """
    scores = torch.matmul(q, k.transpose(-1, -2))  # [B, H, n, Nk]
    if not scaled:
        scores = scores * attn.scale
    if attn.upcast_softmax:
        scores = scores.float()
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


class KVFusionProcessor:
    """Self-attention processor of one fused layer; its behaviour follows the shared `KVFusion`'s mode."""

    def __init__(self, fusion: KVFusion, name: str):
        self.fusion, self.name = fusion, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(f"{self.name}: KV fusion is for self-attention without masks")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)  # [B, N, C]
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        fusion = self.fusion
        if fusion.mode == "read":
            bank_key, bank_value = fusion.bank_for(self.name, query.shape[0])
            key = torch.cat([key, bank_key], dim=1)  # [B, N + S*N, C]: query tokens first
            value = torch.cat([value, bank_value], dim=1)

        hidden_states = attention(attn, query, key, value, fusion.implementation, query_block=fusion.query_block)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor

        if fusion.mode == "record":
            fusion.record(self.name, key, value)
        return hidden_states


class KVFusion:
    """Installs KV-fusion processors on every self-attention layer of `unet` and steers them.

        fusion = KVFusion(unet)                        # unet.attn_processors now fused on attn1
        bank = fusion.record_bank(lambda: unet(...), shots=2)   # support stream
        with fusion.reading(bank):
            out = unet(...)                            # query stream

    Args:
        unet: the UNet to modify in place.
        implementation: "sdpa" or "matmul" (see the module docstring).
        query_block: with "matmul", the queries per attention block (0: all at once); the same result.
    """

    def __init__(self, unet: UNet2DConditionModel, implementation: str = "sdpa", query_block: int = 0):
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {implementation!r}")
        self.implementation = implementation
        self.query_block = check_query_block(query_block)
        self.layer_names = fused_layer_names(unet)
        if not self.layer_names:
            raise ValueError("this UNet has no self-attention layers to fuse")
        self.mode = "plain"
        self.bank: KVBank | None = None
        self._shots = 1
        self._recorded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._stop_after_last = False
        fused = set(self.layer_names)
        processors = dict(unet.attn_processors)  # attn2 keeps whatever it had
        processors.update({name: KVFusionProcessor(self, name) for name in fused})
        unet.set_attn_processor(processors)

    # ------------------------------------------------------------------ support stream
    def record(self, name: str, key: torch.Tensor, value: torch.Tensor) -> None:
        """Stores one layer's support K/V, (B * S, N, C) -> (B, S * N, C)."""
        bs, n, c = key.shape
        if bs % self._shots:
            raise ValueError(f"support batch {bs} is not a multiple of {self._shots} shots")
        shape = (bs // self._shots, self._shots * n, c)
        self._recorded[name] = (key.reshape(shape), value.reshape(shape))
        if self._stop_after_last and len(self._recorded) == len(self.layer_names):
            raise _BankComplete

    def record_bank(self, run_support_stream, shots: int, stop_early: bool = True) -> KVBank:
        """Runs `run_support_stream()` (a UNet call on B * S support inputs, episode-major) in record mode.

        Args:
            run_support_stream: calls the UNet on the support batch; its output is discarded.
            shots: S, the supports per episode.
            stop_early: stop the UNet right after the last self-attention layer (nothing later
                contributes to the bank).
        Returns:
            the bank, with keys and values (B, S * N_l, C_l) per layer.
        """
        self.mode, self._shots, self._recorded = "record", shots, {}
        self._stop_after_last = stop_early
        try:
            run_support_stream()
        except _BankComplete:
            pass
        finally:
            self.mode, self._stop_after_last = "plain", False
        missing = [n for n in self.layer_names if n not in self._recorded]
        if missing:
            raise RuntimeError(f"the support stream did not reach {len(missing)} fused layers, e.g. {missing[0]}")
        recorded, self._recorded = self._recorded, {}
        return KVBank(
            {n: recorded[n][0] for n in self.layer_names}, {n: recorded[n][1] for n in self.layer_names}, shots
        )

    # ------------------------------------------------------------------ query stream
    def reading(self, bank: KVBank) -> _Reading:
        """Context manager: UNet calls inside it run the query stream against `bank`."""
        missing = [n for n in self.layer_names if n not in bank.keys]
        if missing:
            raise ValueError(
                f"the bank lacks {len(missing)} of this model's {len(self.layer_names)} fused layers "
                f"(e.g. {missing[0]}); it was built by another model"
            )
        return _Reading(self, bank)

    def bank_for(self, name: str, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        bank = self.bank
        key, value = bank.keys[name], bank.values[name]
        if key.shape[0] != batch:
            raise ValueError(
                f"the bank holds supports of {key.shape[0]} episodes but the query batch is {batch}; "
                "pass one query per episode of the bank"
            )
        return key, value


class _Reading:
    def __init__(self, fusion: KVFusion, bank: KVBank):
        self.fusion, self.bank = fusion, bank

    def __enter__(self):
        self.fusion.mode, self.fusion.bank = "read", self.bank

    def __exit__(self, *exc):
        self.fusion.mode, self.fusion.bank = "plain", None
