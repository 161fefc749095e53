"""Tokenizer: tiny local BPE built and loaded offline with transformers' BART classes."""

from __future__ import annotations

import numpy as np
import pytest

from xvla.export.policies.xvla.tokenizer import build_tiny_tokenizer, load_tokenizer, tokenize


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=1024))


def test_files_and_special_ids(tok, tmp_path) -> None:
    out = build_tiny_tokenizer(tmp_path / "t", vocab_size=512)
    assert (out / "vocab.json").is_file() and (out / "merges.txt").is_file()
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    assert type(tok).__name__.startswith("BartTokenizer")


def test_tokenize_pads_like_the_official_processor(tok) -> None:
    ids = tokenize(tok, ["pick up the red cup", "open the top drawer of the cabinet please"])
    assert ids.dtype == np.int64 and ids.shape == (2, 50)
    for row in ids:
        n = int((row != 1).sum())
        assert row[0] == 0 and row[n - 1] == 2 and np.all(row[n:] == 1) and np.all(row[1:n - 1] > 2)
    assert int(ids.max()) < 1024
    assert tok.decode(ids[0], skip_special_tokens=True) == "pick up the red cup"


def test_long_text_is_truncated_and_ends_with_eos(tok) -> None:
    ids = tokenize(tok, "turn on the radio " * 40, max_len=50)
    assert ids.shape == (1, 50) and ids[0, -1] == 2 and 1 not in ids[0]


def test_missing_files_are_an_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_tokenizer(tmp_path)
