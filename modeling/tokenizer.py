"""A word-level tokenizer for the synthetic world, loadable by transformers' `AutoTokenizer`.

SD 2.1's BPE tokenizer would spend most of its 49k-entry vocabulary on words the synthetic world
never uses; a word-level vocabulary keeps the `synth` text encoder tiny. It follows CLIP's
conventions where the rest of the toolkit relies on them: every prompt becomes
[BOS, words..., EOS] padded with id 0 to 77 tokens, so the empty prompt is [BOS, EOS, 0 x 75]
exactly as in SD 2.1.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from segdata.categories import COLOURS, FAMILIES, PATTERNS

MAX_LENGTH = 77
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3, as the text-encoder config expects


def synth_vocabulary() -> list[str]:
    """Every word a caption or a SLiMe prompt of the synthetic world may use, in a fixed order."""
    words = ["a", "and", "part", "background", "object"]
    words += list(COLOURS) + list(PATTERNS)
    for family in FAMILIES:
        words.append(family.name)
        words += family.parts
    return list(SPECIAL_TOKENS) + list(dict.fromkeys(words))


def build_word_tokenizer(vocabulary: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A fast tokenizer: lower-cased, split on whitespace and punctuation, unknown words to <unk>."""
    vocabulary = vocabulary or synth_vocabulary()
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_LENGTH,
    )
