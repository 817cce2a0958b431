"""Builders for the classifier tests: a learnable synthetic corpus, a tokenizer trained on it, and a
randomly initialised tiny DeBERTa-v2 checkpoint written to a folder like a downloaded one.

Nothing here reaches a hub: the tokenizer is trained with the `tokenizers` library on the corpus
itself and the model is built from a config, so the fine-tuning path runs offline in seconds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# The label is carried by one cue word of the response; everything else is shared filler, so a model
# that learns has learnt the cue, not the template.
CUES: dict[str, list[str]] = {
    "HARMFUL": ["detonator", "lethal", "overdose", "shrapnel", "strangle", "arsenic", "gunpowder", "ligature"],
    "BORDERLINE": ["perhaps", "arguably", "sometimes", "occasionally", "possibly", "somewhat", "vaguely", "loosely"],
    "SAFE": ["hotline", "counsellor", "therapist", "breathing", "gardening", "volunteer", "library", "kindness"],
}

OPENERS = ["well", "so", "okay", "listen", "honestly", "look", "right", "alright"]
SUBJECTS = ["the plan", "your friend", "this evening", "the weekend", "my neighbour", "the morning",
            "your question", "the garden", "the kitchen", "the train"]
VERBS = ["involves", "needs", "mentions", "brings", "means", "suggests", "includes", "concerns"]
TAILS = ["for now", "later today", "after lunch", "this week", "right away", "quite soon", "in time",
         "step by step"]
PROMPTS = ["what should I do tonight", "can you help me with something", "I have a question",
           "tell me about this", "what do you think", "any advice for me"]


def sentence(rng: random.Random, cue: str) -> str:
    return (f"{rng.choice(OPENERS).capitalize()}, {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {cue} "
            f"{rng.choice(TAILS)}.")


def synthetic_rows(n: int, seed: int = 0, labels: Sequence[str] = ("SAFE", "BORDERLINE", "HARMFUL")
                   ) -> list[dict[str, Any]]:
    """`n` distinct rows (prompt, response, label), labels in equal shares."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(rows) < n:
        label = labels[len(rows) % len(labels)]
        response = sentence(rng, rng.choice(CUES[label]))
        if response in seen:
            continue
        seen.add(response)
        # A third of the rows have no user turn, as a bare (response) table would give them.
        prompt = rng.choice(PROMPTS) if len(rows) % 3 else ""
        rows.append({"id": f"s{len(rows):05d}", "prompt": prompt, "response": response,
                     "label": label})
    return rows


def clear_texts(labels: Sequence[str] = ("SAFE", "HARMFUL"), per_label: int = 6) -> dict[str, list[str]]:
    """Texts per label whose cue is unmistakable, drawn with another seed than the training rows (the
    test checks that none of them was trained on)."""
    rng = random.Random(12345)
    return {label: [sentence(rng, CUES[label][i % len(CUES[label])]) for i in range(per_label)] for label in labels}


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def train_tokenizer(texts: Iterable[str], vocab_size: int = 400) -> Any:
    """A WordPiece tokenizer trained on `texts`, posting `[CLS] a [SEP] b [SEP]` for a pair, wrapped for
    transformers."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                                   special_tokens=SPECIAL_TOKENS))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def tiny_deberta(folder: Path, texts: Iterable[str], seed: int = 0) -> Path:
    """A randomly initialised DeBERTa-v2 sequence classifier (hidden 32, 2 layers) and its tokenizer,
    saved as safetensors like a checkpoint from a hub."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    tokenizer = train_tokenizer(texts)
    torch.manual_seed(seed)
    config = DebertaV2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                             num_labels=2)
    model = DebertaV2ForSequenceClassification(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


class RunsCode:
    """Unpickling this creates `marker`: the proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))
