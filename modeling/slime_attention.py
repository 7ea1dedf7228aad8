"""SLiMe's attention maps, captured by attention processors: cross-attention maps and the WAS map.

METHOD_SPEC part 2.3. `SlimeAttention(unet, layers, token_ids)` installs two processors:

  * `CrossAttentionCapture` on the chosen cross-attention layers (`attn2`): per pass it adds
    the K class tokens' maps, resized to the self-attention grid (S x S) and averaged over heads,
    to a running sum (`cross_maps`: mean over layers, (B, K, S, S)). In "train" mode the maps
    are the raw scaled Q K^T logits; in "test" mode the softmax over all 77 tokens, then the K
    columns (probabilities that do not sum to one over K);
  * `SelfAttentionCapture` on the chosen self-attention layers (`attn1`): the softmax over keys
    P (B, heads, N, N) is contracted at once with the class weights W (B, K, N):
    WAS_k(q) = sum_j W_k[j] P[q, j], averaged over heads and layers (`was`, (B, K, S, S)).
    Nothing ever holds an N x N map beyond the layer that made it (for SD 2.1-base: 5 heads x
    4096 x 4096 per layer, 320 MB in fp32).

The cross-attention layers all run before the self-attention ones (up_blocks[1], [2] before
up_blocks[3]), so W is complete when the first self-attention layer needs it. W is the softmax
over the K classes of the mean logits ("train"), or a function the caller sets from the test-time
maps (`weights_fn`: token threshold and background suppression, `modeling.slime`).

Only the batch rows from `text_from` on are captured: in training the batch is [uncond, learned]
(the SD loss needs both) and `text_from` is 1; at inference only the learned row is run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

MODES = ("train", "test")


@dataclass(frozen=True)
class SlimeLayers:
    """Which attention modules SLiMe reads (names as in `unet.named_modules()`, without `.processor`)."""

    cross: tuple[str, ...]
    self_attention: tuple[str, ...]

    def to_json(self) -> dict:
        return {"cross": list(self.cross), "self_attention": list(self.self_attention)}

    @classmethod
    def from_json(cls, data: dict) -> SlimeLayers:
        return cls(tuple(data["cross"]), tuple(data["self_attention"]))


def _block(up_block: int, attention: int, which: str) -> str:
    return f"up_blocks.{up_block}.attentions.{attention}.transformer_blocks.0.{which}"


# SD 2.1-base at 512 px (latent 64): cross-attention at 16 x 16 (up_blocks[1], 20 heads) and
# 32 x 32 (up_blocks[2] attentions 0-1, 10 heads), "layers 8-12" of the paper; self-attention
# at 64 x 64 (up_blocks[3], 5 heads), "the last three".
SD21_BASE_LAYERS = SlimeLayers(
    cross=tuple(_block(1, i, "attn2") for i in range(3)) + tuple(_block(2, i, "attn2") for i in range(2)),
    self_attention=tuple(_block(3, i, "attn1") for i in range(3)),
)
# The synth UNet keeps SD 2.1's block structure (two layers per block, three attentions per up
# block), so the analogous layers have the same names: cross-attention at 1/4 and 1/2 of the
# latent side, self-attention at the latent side. The tiny test UNet has one layer per block
# (two attentions per up block): the same choice, scaled.
TINY_LAYERS = SlimeLayers(
    cross=tuple(_block(1, i, "attn2") for i in range(2)) + (_block(2, 0, "attn2"),),
    self_attention=tuple(_block(3, i, "attn1") for i in range(2)),
)
PRESET_LAYERS = {"sd21-base": SD21_BASE_LAYERS, "sd21": SD21_BASE_LAYERS, "synth": SD21_BASE_LAYERS,
                 "tiny-random": TINY_LAYERS}  # fmt: skip


def layers_for(preset: str) -> SlimeLayers:
    """The preset's declared layers; a diffusers folder of SD 2.x structure gets SD 2.1-base's."""
    return PRESET_LAYERS.get(preset, SD21_BASE_LAYERS)


def check_layers(unet: UNet2DConditionModel, layers: SlimeLayers) -> None:
    """Raises ValueError naming the first chosen layer this UNet lacks or that has the wrong kind."""
    modules = dict(unet.named_modules())
    for kind, names in (("cross", layers.cross), ("self", layers.self_attention)):
        for name in names:
            module = modules.get(name)
            if module is None:
                raise ValueError(f"this UNet has no attention layer {name!r}; choose layers of its own structure")
            if module.is_cross_attention != (kind == "cross"):
                raise ValueError(f"{name} is not a {kind}-attention layer")


def attention_probs(attn, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Nq, C), (B, Nk, C) -> scaled logits and softmax probabilities, both (B, heads, Nq, Nk), fp32."""
    b, n_q, c = query.shape
    heads = attn.heads
    q = query.view(b, n_q, heads, c // heads).transpose(1, 2).float()  # [B, H, Nq, d]
    k = key.view(b, key.shape[1], heads, c // heads).transpose(1, 2).float()  # [B, H, Nk, d]
    logits = torch.matmul(q, k.transpose(-1, -2)) * attn.scale
    return logits, logits.softmax(dim=-1)


def _attend(attn, probs: torch.Tensor, value: torch.Tensor, hidden_states: torch.Tensor, shape) -> torch.Tensor:
    """probs (B, H, Nq, Nk) @ value (B, Nk, C) through the output projection, residual and rescale."""
    b, n_k, c = value.shape
    v = value.view(b, n_k, attn.heads, c // attn.heads).transpose(1, 2)
    out = torch.matmul(probs.to(v.dtype), v).transpose(1, 2).reshape(b, -1, c)
    out = attn.to_out[1](attn.to_out[0](out))
    if shape is not None:
        out = out.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        out = out + hidden_states
    return out / attn.rescale_output_factor


class _CaptureProcessor:
    """Explicit MatMul-Softmax-MatMul attention that hands its probabilities to the controller."""

    def __init__(self, controller: SlimeAttention, name: str):
        self.controller, self.name = controller, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        if attention_mask is not None:
            raise ValueError(f"{self.name}: SLiMe's capture does not take attention masks")
        residual, shape = hidden_states, None
        if hidden_states.ndim == 4:
            shape = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        logits, probs = attention_probs(attn, query, key)
        self.capture(logits, probs)
        return _attend(attn, probs, value, residual, shape)

    def capture(self, logits: torch.Tensor, probs: torch.Tensor) -> None:
        raise NotImplementedError


class CrossAttentionCapture(_CaptureProcessor):
    def capture(self, logits: torch.Tensor, probs: torch.Tensor) -> None:
        self.controller.add_cross(logits, probs)


class SelfAttentionCapture(_CaptureProcessor):
    def capture(self, logits: torch.Tensor, probs: torch.Tensor) -> None:
        self.controller.add_self(probs)


class _StopAfterLastLayer(Exception):
    """Raised after the last self-attention capture when nothing later in the UNet is needed."""


class SlimeAttention:
    """Installs the capture processors on `unet` and accumulates SLiMe's maps over one UNet pass.

        capture = SlimeAttention(unet, layers, token_ids=range(K))
        capture.start("train", grid_side=S, text_from=1)
        unet(...)
        capture.cross_maps   # (B, K, S, S) mean over layers of head-averaged maps
        capture.was          # (B, K, S, S) WAS map

    Args:
        unet: modified in place; every other layer keeps its processor.
        layers: the chosen layers (`layers_for(preset)`).
        token_ids: the K token positions read as classes (class k reads token token_ids[k]).
    """

    def __init__(self, unet: UNet2DConditionModel, layers: SlimeLayers, token_ids):
        check_layers(unet, layers)
        self.layers, self.token_ids = layers, list(token_ids)
        processors = dict(unet.attn_processors)
        processors.update({f"{n}.processor": CrossAttentionCapture(self, n) for n in layers.cross})
        processors.update({f"{n}.processor": SelfAttentionCapture(self, n) for n in layers.self_attention})
        unet.set_attn_processor(processors)
        self.mode, self.text_from, self.stop_early, self.grid_side = "test", 0, False, 0
        self.weights_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._reset()

    def _reset(self) -> None:
        self._cross_sum: torch.Tensor | None = None
        self._was_sum: torch.Tensor | None = None
        self._cross_count = self._self_count = 0
        self._weights: torch.Tensor | None = None

    def start(
        self,
        mode: str,
        grid_side: int,
        text_from: int = 0,
        weights_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        stop_early: bool = False,
    ) -> None:
        """Clears the maps before a UNet pass.

        Args:
            mode: "train" (raw logits, W = softmax over classes) or "test" (77-token softmax).
            grid_side: S, the side the maps are resized to: the latent side, where the chosen
                self-attention layers run (64 for SD 2.1-base at 512 px).
            text_from: the first batch row run with the learned context.
            weights_fn: test mode: cross maps (B, K, S, S) -> WAS weights (B, K, S, S).
            stop_early: raise after the last self-attention layer (see `run`).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.text_from, self.weights_fn, self.stop_early = mode, text_from, weights_fn, stop_early
        self.grid_side = grid_side
        self._reset()

    def run(self, unet_call: Callable[[], object]) -> None:
        """Calls `unet_call()`; with `stop_early`, the UNet stops after the last map it must make."""
        try:
            unet_call()
        except _StopAfterLastLayer:
            pass
        if self._self_count != len(self.layers.self_attention):
            raise RuntimeError(
                f"the UNet pass reached {self._self_count} of {len(self.layers.self_attention)} self-attention layers"
            )

    # ------------------------------------------------------------------ accumulation
    def add_cross(self, logits: torch.Tensor, probs: torch.Tensor) -> None:
        """One cross-attention layer: (B, H, N, 77) logits and probabilities."""
        source = logits if self.mode == "train" else probs
        maps = source[self.text_from :, :, :, self.token_ids]  # [b, H, N, K]
        b, heads, n, k = maps.shape
        side = _side(n)
        maps = maps.permute(0, 1, 3, 2).reshape(b * heads, k, side, side)
        maps = F.interpolate(maps, size=(self.grid_side, self.grid_side), mode="bilinear", align_corners=False)
        maps = maps.reshape(b, heads, k, self.grid_side, self.grid_side).mean(dim=1)  # [b, K, S, S]
        self._cross_sum = maps if self._cross_sum is None else self._cross_sum + maps
        self._cross_count += 1

    def add_self(self, probs: torch.Tensor) -> None:
        """One self-attention layer: (B, H, N, N) probabilities over keys."""
        probs = probs[self.text_from :]  # [b, H, N, N]
        if self._weights is None:
            self._weights = self._class_weights().flatten(2)  # [b, K, N]
        if probs.shape[-1] != self._weights.shape[-1]:
            raise ValueError(
                f"self-attention layer has {probs.shape[-1]} tokens but the cross-attention maps were resized to "
                f"{self._weights.shape[-1]}; the self-attention layers must all run at the same grid"
            )
        # WAS_k(q) = sum_j W_k[j] P[q, j], head-averaged: [b, K, N]
        was = torch.einsum("bhqj,bkj->bkq", probs, self._weights) / probs.shape[1]
        self._was_sum = was if self._was_sum is None else self._was_sum + was
        self._self_count += 1
        if self.stop_early and self._self_count == len(self.layers.self_attention):
            raise _StopAfterLastLayer

    def _class_weights(self) -> torch.Tensor:
        if self._cross_count != len(self.layers.cross):
            raise RuntimeError(
                f"a self-attention layer ran after {self._cross_count} of {len(self.layers.cross)} cross-attention "
                "layers; SLiMe's self-attention layers must come after its cross-attention layers"
            )
        maps = self.cross_maps
        if self.mode == "train":
            return maps.softmax(dim=1)
        if self.weights_fn is None:
            raise RuntimeError("test mode needs weights_fn (token threshold and background suppression)")
        return self.weights_fn(maps)

    # ------------------------------------------------------------------ results
    @property
    def cross_maps(self) -> torch.Tensor:
        """(B, K, S, S): the cross-attention maps averaged over heads and layers."""
        if self._cross_sum is None:
            raise RuntimeError("no cross-attention map captured; run the UNet after start()")
        return self._cross_sum / self._cross_count

    @property
    def was(self) -> torch.Tensor:
        """(B, K, S, S): the WAS map averaged over the self-attention layers."""
        if self._was_sum is None:
            raise RuntimeError("no self-attention map captured; run the UNet after start()")
        b, k, n = self._was_sum.shape
        return (self._was_sum / self._self_count).reshape(b, k, _side(n), _side(n))


def _side(tokens: int) -> int:
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise ValueError(f"attention over {tokens} tokens is not a square grid; SLiMe needs square inputs")
    return side
