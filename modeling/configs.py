"""Architecture configs of the presets, as plain dicts for diffusers / transformers constructors.

The `synth` and `tiny` models keep SD 2.1's structure (four resolution levels, three
cross-attention down blocks, two transformer layers per block, linear projections, a 4-channel
latent at 1/8 of the image) at a fraction of its width, so every layer selection made for SD 2.1
(16 self-attention layers for DiffewS, up_blocks[1..3] for SLiMe) has its counterpart here.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- synth (embedded default)
SYNTH_RESOLUTION = 128  # pixels; latent 16 x 16

SYNTH_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 64, 128),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=SYNTH_RESOLUTION,
    scaling_factor=1.0,  # replaced by 1 / std of the trained encoder's latents
)

SYNTH_TEXT_ENCODER = dict(
    hidden_size=128,
    intermediate_size=256,
    projection_dim=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="gelu",
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

SYNTH_UNET = dict(
    sample_size=SYNTH_RESOLUTION // 8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(32, 64, 128, 128),
    layers_per_block=2,
    attention_head_dim=(1, 2, 4, 4),  # diffusers' name for the number of heads; head dim 32
    cross_attention_dim=128,
    use_linear_projection=True,
    norm_num_groups=16,
)

# --------------------------------------------------------------------------- tiny-random (unit tests)
TINY_RESOLUTION = 64  # latent 8 x 8

TINY_VAE = dict(SYNTH_VAE, block_out_channels=(8, 8, 16, 16), norm_num_groups=4, sample_size=TINY_RESOLUTION)
TINY_TEXT_ENCODER = dict(
    SYNTH_TEXT_ENCODER, hidden_size=32, intermediate_size=37, projection_dim=32, num_attention_heads=2
)
TINY_UNET = dict(
    SYNTH_UNET,
    sample_size=TINY_RESOLUTION // 8,
    block_out_channels=(8, 16, 16, 16),
    layers_per_block=1,
    attention_head_dim=(2, 2, 2, 2),
    cross_attention_dim=32,
    norm_num_groups=4,
)

# --------------------------------------------------------------------------- schedulers
# Stable Diffusion's noise schedule; the `synth` base is trained with it (epsilon prediction,
# like SD 2.1-base). DiffewS replaces it with its own one-step schedule.
SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
)

# --------------------------------------------------------------------------- SD 2.1 (shape only)
# The public SD 2.1 UNet config: lets tests and benchmarks build the real architecture with
# random weights, no download needed.
SD21_UNET = dict(
    sample_size=96,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    upcast_attention=True,
    norm_num_groups=32,
)
SD21_VAE = dict(
    SYNTH_VAE,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=768,
    scaling_factor=0.18215,
)
