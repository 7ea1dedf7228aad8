"""DiffewS: one UNet step from a query image to its mask, given supports, by KV fusion.

    model = DiffewsModel.from_base(build_model("synth"))          # fresh, for fine-tuning
    model = load_diffews("modeling/pretrained/synth-diffews")     # trained, for inference
    masks = model.segment(query_images, support_images, support_masks)   # (B, H, W) bool

What it does (METHOD_SPEC part 1, the authors' OI2M):
  * the support stream feeds `[z_support_image, z_support_mask]` (8 channels) through a second
    input conv `conv_in_ref`; the query stream feeds `z_query` (4 channels) through the
    original `conv_in`; every later layer is shared;
  * every self-attention layer fuses the supports' K/V into the query's (`modeling.kv_fusion`);
  * t = 1, no noise, the empty prompt's text embedding (computed once, stored with the
    weights); the UNet output is the *negative* mask latent, so the mask latent is -output;
  * mask = VAE decode, channel mean, relative threshold 0.25 x max (`modeling.readouts`: the
    decoder may be a learned read-out instead of the VAE's).
Latents are scaled by the VAE's scaling factor; the posterior mean at inference, a sample in training.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from modeling.imaging import images_to_tensor, masks_to_tensor, vae_latents
from modeling.kv_fusion import KVBank, KVFusion
from modeling.query_encoders import QUERY_ENCODERS, TRAIN_COMMAND
from modeling.readouts import LEARNED_READOUTS, MaskThreshold
from modeling.text_embeddings import empty_text_embedding
from runtime.sections import READOUTS

TIMESTEP = 1  # the only timestep DiffewS ever uses, in training and inference


class StreamConvIn(nn.Module):
    """Replaces the UNet's `conv_in`: 4-channel inputs (query stream) use the original conv,
    8-channel inputs (support stream: image latent then mask latent) use `support`, DiffewS's
    `conv_in_ref`. The choice is by input width, so no state or flag travels with a call.

    `conv_in_ref` starts as the original weights repeated along the input axis and halved, bias
    copied (Marigold's trick): at initialisation an 8-channel input [z, z] gives exactly conv_in(z).
    """

    def __init__(self, conv_in: nn.Conv2d):
        super().__init__()
        self.query = conv_in
        self.support = nn.Conv2d(
            2 * conv_in.in_channels,
            conv_in.out_channels,
            kernel_size=conv_in.kernel_size,
            padding=conv_in.padding,
            dtype=conv_in.weight.dtype,
            device=conv_in.weight.device,
        )
        with torch.no_grad():
            self.support.weight.copy_(conv_in.weight.repeat(1, 2, 1, 1) / 2)
            self.support.bias.copy_(conv_in.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.support.in_channels:
            return self.support(x)
        if x.shape[1] == self.query.in_channels:
            return self.query(x)
        raise ValueError(
            f"UNet input has {x.shape[1]} channels; expected {self.query.in_channels} (query latent) "
            f"or {self.support.in_channels} (support image and mask latents)"
        )


# Saved weights use the authors' / diffusers names: conv_in.* (query) and conv_in_ref.* (support).
_STATE_NAMES = (("conv_in.query.", "conv_in."), ("conv_in.support.", "conv_in_ref."))


def unet_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The UNet's weights under diffusers names, with `conv_in_ref.weight` / `.bias` added."""
    out = {}
    for key, value in unet.state_dict().items():
        for ours, theirs in _STATE_NAMES:
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
        out[key] = value
    return out


def load_unet_state_dict(unet: UNet2DConditionModel, state: dict[str, torch.Tensor], assign: bool = False) -> None:
    """Inverse of `unet_state_dict` (strict: every weight must be present).

    assign: make `state`'s tensors the parameters instead of copying them in (for a UNet built
    without memory, on the meta device: one copy of the weights instead of two).
    """
    renamed = {}
    for key, value in state.items():
        for ours, theirs in _STATE_NAMES:
            if key.startswith(theirs):
                key = ours + key[len(theirs) :]
        renamed[key] = value
    unet.load_state_dict(renamed, strict=True, assign=assign)


class DiffewsModel(nn.Module):
    """The DiffewS network: KV-fusion UNet with `conv_in_ref`, frozen VAE, fixed empty-text embedding.

    Args:
        unet: a diffusers UNet; `conv_in_ref` and the fusion processors are injected if absent.
        vae: the frozen autoencoder (only its encoder and decoder are used).
        empty_embedding: (1, L, D) text conditioning of every call.
        resolution: image side the model runs at, in pixels.
        attention: "sdpa" or "matmul" (see `modeling.kv_fusion`).
        threshold: decoded mask image -> binary mask.
        mask_decoder: the distilled read-out (`modeling.readouts.MaskDecoder`), used by
            `decode_masks(..., readout="mask_decoder")` in place of the VAE decoder; None if the model has none.
        mask_head: the VAE decoder to half resolution plus a learned head (`modeling.readouts.MaskHeadReadout`),
            used by `decode_masks(..., readout="mask_head")`; None if the model has none.
        query_encoder: a distilled query encoder (`modeling.query_encoders.DistilledEncoder`), used by
            `encode_query(..., encoder="distilled")` in place of the VAE encoder; None if the model has none.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        empty_embedding: torch.Tensor,
        resolution: int,
        attention: str = "sdpa",
        threshold: MaskThreshold | None = None,
        mask_decoder: nn.Module | None = None,
        mask_head: nn.Module | None = None,
        query_encoder: nn.Module | None = None,
    ):
        super().__init__()
        if not isinstance(unet.conv_in, StreamConvIn):
            unet.conv_in = StreamConvIn(unet.conv_in)
        self.unet, self.vae, self.resolution = unet, vae, resolution
        self.vae.requires_grad_(False)
        self.register_buffer("empty_embedding", empty_embedding.detach().float(), persistent=False)
        self.fusion = KVFusion(unet, attention)
        self.threshold = threshold or MaskThreshold()
        self.mask_decoder, self.mask_head, self.query_encoder = mask_decoder, mask_head, query_encoder
        # Recompute each stream in the backward pass instead of storing its activations. Done per
        # stream, not with diffusers' per-block checkpointing: a block recomputed during backward
        # would run outside the stream's record / read mode and silently attend to the wrong tokens.
        self.gradient_checkpointing = False

    @classmethod
    def from_base(cls, components, tokens: int = 77, attention: str = "sdpa") -> DiffewsModel:
        """A fresh DiffewS model from base `ModelComponents` (the text encoder is used once, here)."""
        embedding = empty_text_embedding(components.text_encoder, components.tokenizer, tokens)
        return cls(components.unet, components.vae, embedding, components.resolution, attention)

    # ------------------------------------------------------------------ latents
    def encode(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> (B, 4, R/8, R/8) scaled latents (posterior mean, or a sample)."""
        return vae_latents(self.vae, x, sample=sample)

    def encode_query(self, x: torch.Tensor, encoder: str = "vae") -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> (B, 4, R/8, R/8) query latents, from `encoder` (`QUERY_ENCODERS`):
        "vae" (the posterior mean, the method's own) or "distilled" (the model's `query_encoder`)."""
        if encoder == "vae":
            return self.encode(x)
        if encoder not in QUERY_ENCODERS:
            raise ValueError(f"unknown query encoder {encoder!r}; choose one of {', '.join(QUERY_ENCODERS)}")
        if self.query_encoder is None:
            raise ValueError(f"this model has no distilled query encoder; train one with {TRAIN_COMMAND}")
        return self.query_encoder(x)

    def decode_mask_images(self, mask_latents: torch.Tensor, readout: str = "vae") -> torch.Tensor:
        """(B, 4, h, w) predicted mask latents -> (B, 3, H, W) decoded mask images in about [-1, 1].

        Args:
            readout: one of `runtime.sections.READOUTS`: "vae" (the full VAE decoder, the method's
                own), "mask_head" or "mask_decoder" (the model's learned read-outs, `modeling.readouts`).
        """
        if readout == "vae":
            return self.vae.decode(mask_latents / self.vae.config.scaling_factor).sample
        if readout not in LEARNED_READOUTS:
            raise ValueError(f"unknown read-out {readout!r}; choose one of {', '.join(READOUTS)}")
        network = getattr(self, readout)
        if network is None:
            raise ValueError(
                f"this model has no {readout}; train one with python -m train.mask_decoder --model DIR --kind {readout}"
            )
        return network(mask_latents)

    def decode_masks(
        self, mask_latents: torch.Tensor, readout: str = "vae", threshold: MaskThreshold | None = None
    ) -> torch.Tensor:
        """(B, 4, h, w) predicted mask latents -> (B, H, W) bool via a read-out's decoder (see above) and the threshold."""
        return (threshold or self.threshold)(self.decode_mask_images(mask_latents, readout))

    def _context(self, batch: int) -> torch.Tensor:
        return self.empty_embedding.expand(batch, -1, -1)

    # ------------------------------------------------------------------ the two streams
    def support_bank(self, image_latents: torch.Tensor, mask_latents: torch.Tensor, stop_early: bool = True) -> KVBank:
        """Runs the support stream and returns its K/V bank.

        Args:
            image_latents, mask_latents: (B, S, 4, h, w): S supports of each of B episodes.
            stop_early: skip the UNet layers after the last self-attention (they do not feed the bank).
        Returns:
            bank with keys / values (B, S * N_l, C_l) per fused layer.
        """
        if image_latents.shape != mask_latents.shape or image_latents.ndim != 5:
            raise ValueError(
                f"support image and mask latents must both be (B, S, 4, h, w), got "
                f"{tuple(image_latents.shape)} and {tuple(mask_latents.shape)}"
            )
        b, s = image_latents.shape[:2]
        x = torch.cat([image_latents, mask_latents], dim=2).flatten(0, 1)  # [B*S, 8, h, w], this order matters
        names = self.fusion.layer_names

        def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            bank = self.fusion.record_bank(
                lambda: self.unet(x, TIMESTEP, encoder_hidden_states=self._context(b * s)),
                shots=s,
                stop_early=stop_early,
            )
            return tuple(bank.keys[n] for n in names) + tuple(bank.values[n] for n in names)

        flat = self._maybe_checkpoint(run, x)
        return KVBank(dict(zip(names, flat[: len(names)])), dict(zip(names, flat[len(names) :])), s)

    def query_output(self, query_latents: torch.Tensor, bank: KVBank) -> torch.Tensor:
        """(B, 4, h, w) query latents -> (B, 4, h, w) raw UNet output (the negative mask latent)."""
        names = self.fusion.layer_names
        if any(n not in bank.keys for n in names):
            self.fusion.reading(bank)  # raises the explanatory error

        def run(z: torch.Tensor, *flat: torch.Tensor) -> torch.Tensor:
            own = KVBank(dict(zip(names, flat[: len(names)])), dict(zip(names, flat[len(names) :])), bank.shots)
            with self.fusion.reading(own):
                return self.unet(z, TIMESTEP, encoder_hidden_states=self._context(len(z))).sample

        return self._maybe_checkpoint(
            run, query_latents, *(bank.keys[n] for n in names), *(bank.values[n] for n in names)
        )

    def _maybe_checkpoint(self, fn, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def predict_mask_latents(self, query_latents: torch.Tensor, bank: KVBank) -> torch.Tensor:
        """(B, 4, h, w) -> (B, 4, h, w) predicted mask latents (v-prediction with alpha_bar = 0 gives -output)."""
        return -self.query_output(query_latents, bank)

    # ------------------------------------------------------------------ pixels in, masks out
    @torch.no_grad()
    def bank_from_pixels(self, support_images: np.ndarray, support_masks: np.ndarray) -> KVBank:
        """(B, S, H, W, 3) uint8 images and (B, S, H, W) binary masks -> the supports' bank."""
        b, s = support_images.shape[:2]
        images = self._resize(images_to_tensor(support_images.reshape(b * s, *support_images.shape[2:])), "bilinear")
        masks = self._resize(masks_to_tensor(support_masks.reshape(b * s, *support_masks.shape[2:])), "nearest")
        z_images = self.encode(images).unflatten(0, (b, s))
        z_masks = self.encode(masks).unflatten(0, (b, s))
        return self.support_bank(z_images, z_masks)

    @torch.no_grad()
    def segment(
        self,
        query_images: np.ndarray,
        bank: KVBank,
        readout: str = "vae",
        threshold: MaskThreshold | None = None,
        query_encoder: str = "vae",
    ) -> np.ndarray:
        """(B, H, W, 3) uint8 queries, one per episode of `bank` -> (B, H, W) bool masks at the query size."""
        x = self._resize(images_to_tensor(query_images), "bilinear")
        z = self.encode_query(x, query_encoder)
        masks = self.decode_masks(self.predict_mask_latents(z, bank), readout, threshold)  # [B, R, R]
        size = query_images.shape[1:3]
        if tuple(masks.shape[1:]) != tuple(size):
            masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
        return masks.cpu().numpy()

    def _resize(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        if x.shape[-2:] == (self.resolution, self.resolution):
            return x
        kwargs = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
        return F.interpolate(x, size=(self.resolution, self.resolution), mode=mode, **kwargs)
