"""DexVLA inference is batch-correct: a left-padded batch of 2 (different prompts, image sizes, noise)
gives what two batch-1 runs give, and a run is deterministic given the injected noise.

The official code cannot do this (one noise draw for the whole batch, a crash in ``torch.cat`` at B=2).
Runs the seeded ``tiny-dexvla`` preset; no conformance data needed.
"""

from __future__ import annotations

import pytest
import torch

from xvla.export.policies.dexvla.presets import build_seeded, preset

CFG = preset("tiny-dexvla")
TOK = CFG.tokens
PATCH_DIM = 3 * 2 * 14 * 14
MAX_NEW = 6


def _prompt(task: list[int], grids: list[tuple[int, int, int]], gen: torch.Generator):
    """ids for <|im_start|>user\\n [vision blocks] task <|im_end|>\\n<|im_start|>assistant\\n + pixel values."""
    ids = [1001, 5, 9, 1]  # <|im_start|> + a few text tokens
    for t, h, w in grids:
        ids += [TOK.vision_start_token_id] + [TOK.image_token_id] * (t * h * w // 4) + [TOK.vision_end_token_id]
    ids += task + [TOK.eos_token_id, 198 % 1000, 1001, 7, 8]
    n_patches = sum(t * h * w for t, h, w in grids)
    return torch.tensor(ids), torch.randn(n_patches, PATCH_DIM, generator=gen), torch.tensor(grids)


def _left_pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), CFG.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):], mask[i, n - len(s):] = s, 1
    return ids, mask


@pytest.fixture(scope="module")
def model():
    return build_seeded("tiny-dexvla", seed=3)


@pytest.fixture(scope="module")
def samples():
    gen = torch.Generator().manual_seed(11)
    a = _prompt([40, 41, 42, 43, 44, 45, 46, 47, 48], [(1, 4, 6)] * 3, gen)
    b = _prompt([300, 301, 302], [(1, 4, 4), (1, 2, 4), (1, 4, 4)], gen)
    states = torch.randn(2, CFG.head.state_dim, generator=gen)
    noise = torch.randn(2, CFG.head.num_queries, CFG.head.output_dim, generator=gen)
    return [a, b], states, noise


def _run(model, prompts, states, noise, eos=TOK.eos_token_id):
    ids, mask = _left_pad([p[0] for p in prompts])
    pv = torch.cat([p[1] for p in prompts])
    grid = torch.cat([p[2] for p in prompts])
    return model.predict(ids, mask, pv, grid, states, noise, MAX_NEW, eos), mask


def _check_batch_equals_singles(model, prompts, states, noise, eos=TOK.eos_token_id):
    batch, mask = _run(model, prompts, states, noise, eos)
    assert bool((mask[1] == 0).any()), "sample 1 must be left-padded for this test to mean anything"
    gb = batch["generation"]
    for i in range(2):
        single, _ = _run(model, [prompts[i]], states[i:i + 1], noise[i:i + 1], eos)
        gs = single["generation"]
        n = int(gs.n_new[0])
        assert int(gb.n_new[i]) == n
        assert torch.equal(gb.new_tokens[i, :n], gs.new_tokens[0, :n]), f"sample {i}: reasoning tokens differ"
        valid = mask[i].bool()
        torch.testing.assert_close(gb.prefill_hidden[i][valid], gs.prefill_hidden[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch["film"]["action_hidden_states"][i], single["film"]["action_hidden_states"][0],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch["actions"][i], single["actions"][0], atol=1e-5, rtol=0.0)
    return batch


def test_batch_of_two_equals_two_single_runs(model, samples):
    prompts, states, noise = samples
    batch = _check_batch_equals_singles(model, prompts, states, noise)
    # per-sample noise: the two chunks are not one noise draw broadcast
    assert not torch.allclose(batch["actions"][0], batch["actions"][1])


def test_batch_with_one_sample_stopping_early(model, samples):
    """Sample 0 hits its EOS mid-way while sample 1 goes on: its FiLM span stops at its own EOS."""
    prompts, states, noise = samples
    toks = [_run(model, [prompts[i]], states[i:i + 1], noise[i:i + 1])[0]["generation"].new_tokens[0].tolist()
            for i in range(2)]
    # the first token of sample 0 (after its first) that sample 1 does not produce up to that step
    k = next(k for k in range(1, MAX_NEW - 1) if toks[0][k] not in toks[0][:k] + toks[1][:k + 2])
    batch = _check_batch_equals_singles(model, prompts, states, noise, eos=toks[0][k])
    assert int(batch["generation"].n_new[0]) == k + 1
    assert int(batch["generation"].n_new[1]) > k + 1


def test_deterministic_given_injected_noise(model, samples):
    prompts, states, noise = samples
    first, _ = _run(model, prompts, states, noise)
    again, _ = _run(model, prompts, states, noise)
    assert torch.equal(first["actions"], again["actions"])
    assert torch.equal(first["generation"].sequences, again["generation"].sequences)
    other, _ = _run(model, prompts, states, noise + 0.5)
    assert not torch.allclose(first["actions"], other["actions"])


def test_noise_batch_must_match(model, samples):
    prompts, states, noise = samples
    with pytest.raises(ValueError, match="one draw per sample"):
        _run(model, prompts, states, noise[:1])


def test_image_token_count_mismatch_is_named(model, samples):
    prompts, states, noise = samples
    ids, pv, grid = prompts[0]
    with pytest.raises(ValueError, match="image tokens and image features"):
        short = torch.cat([ids[:5], ids[6:]])[None]  # one <|image_pad|> fewer than the grid needs
        model.predict(short, torch.ones_like(short), pv, grid, states[:1], noise[:1], 2, TOK.eos_token_id)
