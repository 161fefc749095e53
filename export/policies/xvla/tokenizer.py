"""The BART tokenizer X-VLA uses, loaded offline from a checkpoint folder, and a tiny stand-in.

The official processor calls the tokenizer with ``padding="max_length", max_length=50,
truncation=True`` and keeps only ``input_ids``: ``<s> body </s> <pad>...``, pad id 1. The
model attends the pads (no attention mask), so the padding must be reproduced exactly.

``build_tiny_tokenizer`` trains a byte-level BPE on a small built-in corpus of robot
instructions and writes ``vocab.json`` + ``merges.txt`` with BART's special tokens
(``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>`` last), so tests and demos get the
real loading path without downloading anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, Union

import numpy as np

MAX_TEXT_LEN = 50
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3; "<mask>" is appended last
MASK_TOKEN = "<mask>"

_CORPUS = [
    "pick up the red cup and place it on the plate",
    "open the top drawer of the cabinet",
    "close the fridge door",
    "turn on the radio. current: pick up radio from coffee table.",
    "put the apple into the basket",
    "fold the towel on the table",
    "push the chair under the desk",
    "press the button on the microwave",
    "navigate to the kitchen counter",
    "move the bottle to the left of the bowl",
    "grasp the handle and pull the door open",
    "place the book on the shelf",
    "wipe the table with the sponge",
    "stack the blue block on the green block",
    "pour water from the kettle into the mug",
    "hang the jacket on the hook",
    "throw the paper into the trash can",
    "turn off the lamp next to the bed",
]


def build_tiny_tokenizer(out_dir: Union[str, Path], vocab_size: int = 1024) -> Path:
    """Write a small byte-level BPE tokenizer with BART's special-token ids into ``out_dir``."""
    from tokenizers import ByteLevelBPETokenizer

    if vocab_size < 300:
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level BPE (needs >= 300)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    corpus = _CORPUS * 4 + [" ".join(_CORPUS)]
    # the mask token goes last, like BART's vocabulary; train leaves room for it
    bpe.train_from_iterator(corpus, vocab_size=vocab_size - 1, min_frequency=1,
                            special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    bpe.add_special_tokens([MASK_TOKEN])
    bpe.save_model(str(out))
    with open(out / "tokenizer_config.json", "w") as f:
        json.dump({"tokenizer_class": "BartTokenizer", "model_max_length": 1024, "add_prefix_space": False,
                   "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                   "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": MASK_TOKEN}, f, indent=2)
    with open(out / "special_tokens_map.json", "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                   "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": MASK_TOKEN}, f, indent=2)
    return out


def load_tokenizer(path: Union[str, Path]):
    """BartTokenizerFast (or the slow BartTokenizer) from a folder, never touching the network."""
    from transformers import BartTokenizer, BartTokenizerFast

    path = Path(path)
    if not (path / "vocab.json").is_file() and not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path}: no vocab.json or tokenizer.json (expected BART tokenizer files)")
    try:
        return BartTokenizerFast.from_pretrained(str(path), local_files_only=True)
    except Exception:  # noqa: BLE001 - fall back to the pure-Python class on any fast-path failure
        return BartTokenizer.from_pretrained(str(path), local_files_only=True)


def tokenize(tokenizer, instructions: Union[str, Sequence[str]], max_len: int = MAX_TEXT_LEN) -> np.ndarray:
    """Instructions -> int64 ``[B, max_len]``: ``<s> ... </s>`` right-padded with the pad id (1), truncated."""
    if isinstance(instructions, str):
        instructions = [instructions]
    if not instructions:
        raise ValueError("instructions: empty list")
    enc = tokenizer(list(instructions), padding="max_length", max_length=max_len, truncation=True,
                    return_attention_mask=False)
    return np.asarray(enc["input_ids"], dtype=np.int64)
