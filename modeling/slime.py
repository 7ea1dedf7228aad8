"""SLiMe: part segmentation from text embeddings optimised against SD's attention maps (METHOD_SPEC part 2).

    model = SlimeModel.from_base(build_model("synth"), class_names=["background", "cap", "stem"])
    losses = model.training_losses(images, labels, timestep, generator)   # optimise model.learned
    scores = model.score_maps(crops, out_size=(128, 128))                 # (B, K, h, w), test time

What is learned: rows 1..K-1 of the text encoder's output for the prompt "part" x K (row 0, the
BOS token, is the fixed background class; every other row stays as computed). The VAE, the UNet
and the text encoder are frozen; the text encoder is only needed to build the initial context.

Training step (2.4): z_t from the VAE posterior sample at t in [5, 100]; the UNet runs the batch
[uncond, learned]; loss = weighted CE over the mean cross-attention logits + alpha x MSE(WAS,
one-hot) x K + beta x MSE(CFG-100 noise prediction, noise).

Test time (2.6): t = 100 with seeded noise (a fixed buffer, so results are reproducible), only
the learned row runs (the uncond row never influences the maps); 77-token softmax then the K
tokens; tokens whose map never reaches 0.2 are dropped; the background map is zeroed where it is
not above its mean; WAS; each WAS map is upsampled to the output size and linearly rescaled to
its cross-attention map's range. The label map is the argmax of the (patch-averaged) scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn

from modeling.imaging import images_to_tensor, vae_latents
from modeling.slime_attention import SlimeAttention, SlimeLayers, layers_for
from modeling.text_embeddings import empty_text_embedding, text_embedding

PROMPT_WORD = "part"
CE_WEIGHT, WAS_WEIGHT, SD_WEIGHT = 1.0, 1.0, 0.005  # alpha = 1.0, beta = 0.005 (Table 6's best)
GUIDANCE_SCALE = 100.0  # the CFG scale inside the SD regulariser, as the released code has it
TRAIN_TIMESTEPS = (5, 100)  # t ~ U{5..100}, inclusive
TEST_TIMESTEP = 100
SD_TOKEN_THRESHOLD = 0.2  # the released code's --patch_threshold, for SD 2.1-base's CLIP-H
# The synth text encoder spreads its 77-token attention over the padding rows instead of piling it
# on BOS as CLIP-H does, so the background (BOS) map of a trained embedding peaks near 0.07 and
# SD's 0.2 drops the background class on every image. 0.02 was chosen on the validation split of
# two categories (mushroom, car; 1-sample): 0 and 0.02 tie, 0.05 drops the mushroom stem on some
# images, 0.1 and 0.2 drop most classes (mean part IoU 0.78 / 0.45 at 0.02, 0.26 / 0.17 at 0.2;
# `python -m train.evaluate_parts --categories 0 3 --settings 1 --split val --thresholds 0 0.02
# 0.05 0.1 0.2 --out benchmarks/results/slime-threshold`).
PRESET_TOKEN_THRESHOLDS = {"synth": 0.02, "tiny-random": 0.0}


def default_token_threshold(preset: str) -> float:
    return PRESET_TOKEN_THRESHOLDS.get(preset, SD_TOKEN_THRESHOLD)


@dataclass(frozen=True)
class SlimeSettings:
    """Test-time settings, stored with the embeddings and baked into exported graphs.

    Attributes:
        token_threshold: a class counts only if its cross-attention map reaches this maximum.
        noise_seed: seed of the fixed test-time noise.
        timestep: t_test.
        suppress_first_kept: the released code's quirk: zero the *first kept* map below its mean
            (not the background's when background fails the threshold). Off: background only.
        bgr: the released code's quirk (since its commit 0df6cc5): feed images to SD as BGR.
    """

    token_threshold: float = SD_TOKEN_THRESHOLD
    noise_seed: int = 0
    timestep: int = TEST_TIMESTEP
    suppress_first_kept: bool = False
    bgr: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def prompt_for(num_classes: int) -> str:
    """The prompt whose K first output rows SLiMe reads: "part" repeated K times."""
    return " ".join([PROMPT_WORD] * num_classes)


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The CE weights of the released code: w_c = N_fg / n_c for present parts, 0 for absent, background 1.

    Args:
        labels: (..., S, S) int64 class labels.
    Returns:
        (K,) float32, N_fg = the foreground pixel count (background excluded from the total).
    """
    counts = torch.bincount(labels.flatten(), minlength=num_classes)[:num_classes].float()
    counts[0] = 0
    weights = torch.where(counts > 0, counts.sum() / (counts + 1e-6), torch.zeros_like(counts))
    weights[0] = 1.0
    return weights


class SlimeModel(nn.Module):
    """Frozen VAE encoder and UNet with SLiMe's capture processors; `learned` is the only trainable tensor.

    Args:
        vae, unet: the base model's (frozen here).
        scheduler_config: the base's noise schedule (only `alphas_cumprod` is used).
        text: (1, 77, D) text-encoder output of `prompt_for(K)`; rows 1..K-1 initialise `learned`.
        uncond: (1, 77, D) text-encoder output of the empty prompt.
        num_classes: K, background included.
        layers: the attention layers to read.
        resolution: the image side the UNet sees.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        scheduler_config: dict,
        text: torch.Tensor,
        uncond: torch.Tensor,
        num_classes: int,
        layers: SlimeLayers,
        resolution: int,
        settings: SlimeSettings | None = None,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"SLiMe needs the background and at least one part, got {num_classes} class(es)")
        if num_classes + 2 > text.shape[1]:
            raise ValueError(f"{num_classes} classes do not fit in {text.shape[1]} tokens")
        self.vae, self.unet = vae.requires_grad_(False).eval(), unet.requires_grad_(False).eval()
        self.num_classes, self.layers, self.resolution = num_classes, layers, resolution
        self.settings = settings or SlimeSettings()
        self.register_buffer("text", text.detach().clone())
        self.register_buffer("uncond", uncond.detach().clone())
        self.learned = nn.Parameter(text[0, 1:num_classes].detach().clone())  # [K-1, D]
        alphas = DDPMScheduler.from_config(scheduler_config).alphas_cumprod.float()
        self.register_buffer("alphas_cumprod", alphas)
        self.latent_side = resolution // 2 ** (len(vae.config.block_out_channels) - 1)
        generator = torch.Generator().manual_seed(self.settings.noise_seed)
        noise = torch.randn(1, vae.config.latent_channels, self.latent_side, self.latent_side, generator=generator)
        self.register_buffer("test_noise", noise)
        self.capture = SlimeAttention(unet, layers, token_ids=range(num_classes))

    @classmethod
    def from_base(
        cls, components, class_names: list[str], settings: SlimeSettings | None = None, prompt: str | None = None
    ) -> SlimeModel:
        """A fresh model to optimise: the context of "part" x K, learned rows at their CLIP values.

        Without `settings`, the defaults with the preset's token threshold. `prompt` replaces
        "part" x K, as the released code's `--text_prompt` does.
        """
        k = len(class_names)
        settings = settings or SlimeSettings(token_threshold=default_token_threshold(components.preset))
        text = text_embedding(components.text_encoder, components.tokenizer, prompt or prompt_for(k))
        with torch.no_grad():
            uncond = empty_text_embedding(components.text_encoder, components.tokenizer)
        return cls(
            components.vae,
            components.unet,
            components.scheduler_config,
            text,
            uncond,
            k,
            layers_for(components.preset),
            components.resolution,
            settings,
        )

    # ------------------------------------------------------------------ pieces
    def context(self) -> torch.Tensor:
        """(1, 77, D): the text embedding with rows 1..K-1 replaced by the learned ones."""
        k = self.num_classes
        return torch.cat([self.text[:, :1], self.learned[None].to(self.text.dtype), self.text[:, k:]], dim=1)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> (B, 4, s, s) scaled latents: a posterior sample with a generator, else the mean."""
        if self.settings.bgr:
            x = x.flip(1)
        return vae_latents(self.vae, x, sample=generator is not None, generator=generator)

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor | int) -> torch.Tensor:
        """DDPM forward process q(z_t | z_0) (what `scheduler.add_noise` does)."""
        alpha = self.alphas_cumprod[timestep].reshape(-1, 1, 1, 1)
        return alpha.sqrt() * z0 + (1 - alpha).sqrt() * noise

    # ------------------------------------------------------------------ training
    def training_losses(
        self, images: torch.Tensor, labels: torch.Tensor, timestep: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """One optimisation step's losses.

        Args:
            images: (1, 3, R, R) in [-1, 1], augmented.
            labels: (1, S, S) int64 part labels at the latent side S (nearest-resized).
            timestep: t in [5, 100].
            generator: draws the posterior sample and the noise.
        Returns:
            "ce", "was_mse", "sd" and "total" (the weighted sum to minimise).
        """
        k = self.num_classes
        with torch.no_grad():
            z0 = self.encode(images, generator)
        noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype)
        z_t = self.add_noise(z0, noise, timestep)
        context = torch.cat([self.uncond.expand(len(z0), -1, -1), self.context().expand(len(z0), -1, -1)])
        self.capture.start("train", grid_side=z0.shape[-1], text_from=len(z0))
        eps = self.unet(torch.cat([z_t, z_t]), timestep, encoder_hidden_states=context).sample
        eps_uncond, eps_text = eps.chunk(2)
        guided = eps_uncond + GUIDANCE_SCALE * (eps_text - eps_uncond)
        sd = F.mse_loss(guided, noise)
        logits = self.capture.cross_maps  # [1, K, S, S] raw logits
        ce = F.cross_entropy(logits, labels, weight=class_weights(labels, k))
        one_hot = F.one_hot(labels, k).permute(0, 3, 1, 2).float()
        was_mse = F.mse_loss(self.capture.was, one_hot) * k
        total = CE_WEIGHT * ce + WAS_WEIGHT * was_mse + SD_WEIGHT * sd
        return {"ce": ce, "was_mse": was_mse, "sd": sd, "total": total}

    # ------------------------------------------------------------------ test time
    def test_weights(self, maps: torch.Tensor) -> torch.Tensor:
        """WAS weights from test cross maps (B, K, S, S): dropped tokens zeroed, background suppressed."""
        keep = self.kept(maps)  # [B, K]
        classes = torch.arange(self.num_classes, device=maps.device)
        if self.settings.suppress_first_kept:
            first = keep.to(torch.int32).argmax(dim=1, keepdim=True)  # the first True
            target = (classes[None] == first) & keep
        else:
            target = (classes[None] == 0) & keep
        below_mean = maps <= maps.mean(dim=(2, 3), keepdim=True)
        suppressed = torch.where(target[:, :, None, None] & below_mean, torch.zeros_like(maps), maps)
        return suppressed * keep[:, :, None, None]

    def kept(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, K) bool: the classes whose cross-attention maximum reaches the token threshold."""
        return maps.amax(dim=(2, 3)) >= self.settings.token_threshold

    def score_maps(self, x: torch.Tensor, out_size: tuple[int, int], stop_early: bool = False) -> torch.Tensor:
        """Per-class scores of image crops, the inside of the released code's `get_patched_masks`.

        Args:
            x: (B, 3, R, R) in [-1, 1], crops resized to the model resolution.
            out_size: (h, w) the crop covers in the output.
            stop_early: stop the UNet after the last self-attention layer (eager only).
        Returns:
            (B, K, h, w) float32: WAS maps rescaled to their cross-attention ranges; 0 for dropped classes.
        """
        z = self.add_noise(self.encode(x), self.test_noise.expand(len(x), -1, -1, -1), self.settings.timestep)
        context = self.context().expand(len(x), -1, -1)
        self.capture.start("test", grid_side=z.shape[-1], weights_fn=self.test_weights, stop_early=stop_early)
        self.capture.run(lambda: self.unet(z, self.settings.timestep, encoder_hidden_states=context))
        cross, was = self.capture.cross_maps, self.capture.was  # [B, K, S, S] each
        hi, lo = cross.amax(dim=(2, 3)), cross.amin(dim=(2, 3))  # [B, K]
        was = F.interpolate(was, size=out_size, mode="bilinear", align_corners=False)
        was_hi, was_lo = was.amax(dim=(2, 3)), was.amin(dim=(2, 3))
        coef = (was_hi - was_lo) / (hi - lo)
        coef = torch.where(torch.isnan(coef) | (coef == 0), torch.full_like(coef, 1e-7), coef)
        offset = lo - was_lo / coef
        scores = was / coef[:, :, None, None] + offset[:, :, None, None]
        return scores * self.kept(cross)[:, :, None, None]

    @torch.no_grad()
    def segment_crops(self, crops: np.ndarray, stop_early: bool = True) -> np.ndarray:
        """(B, P, P, 3) uint8 crops -> (B, K, P, P) float32 scores (the part segmenter graph's job, in PyTorch)."""
        x = images_to_tensor(crops)
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return self.score_maps(x, tuple(crops.shape[1:3]), stop_early=stop_early).numpy()
