"""Text conditioning from a base model's CLIP text encoder: the fixed empty-prompt embedding and prompt embeddings.

DiffewS conditions every UNet call on the empty prompt's embedding, computed once and stored with
the weights; SLiMe starts its learned rows from a prompt's embedding and keeps the empty prompt's
as its unconditional context. Neither method runs the text encoder at inference.
"""

from __future__ import annotations

import torch

EMPTY_PROMPT_TOKENS = (77, 2)  # 77: padded, as training sees it (default); 2: the released inference code


@torch.no_grad()
def empty_text_embedding(text_encoder, tokenizer, tokens: int = 77) -> torch.Tensor:
    """(1, tokens, D): the text encoder's output for the empty prompt.

    tokens=77 pads "" to the full context, as the authors' training does (default); tokens=2
    keeps just BOS and EOS, as their inference pipeline does (`padding="do_not_pad"`).
    """
    if tokens not in EMPTY_PROMPT_TOKENS:
        raise ValueError(f"tokens must be one of {EMPTY_PROMPT_TOKENS}, got {tokens}")
    if tokens == 77:
        ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    else:
        ids = tokenizer("", padding="do_not_pad", return_tensors="pt")
    ids = ids.input_ids.to(text_encoder.device)
    if ids.shape[1] != tokens:
        raise ValueError(f"the tokenizer gave {ids.shape[1]} tokens for the empty prompt, expected {tokens}")
    return text_encoder(ids)[0].float()


@torch.no_grad()
def text_embedding(text_encoder, tokenizer, prompt: str) -> torch.Tensor:
    """(1, 77, D): the text encoder's last hidden state for `prompt`, padded to 77 tokens."""
    ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0].float()
