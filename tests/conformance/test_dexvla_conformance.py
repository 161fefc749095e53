"""Our DexVLA (export/policies/dexvla) against the goldens of the official LeRobot code @ a0510c0f5.

The folder comes from ``XVLA_CONFORMANCE_DIR`` (``<dir>/dexvla`` or the set folder itself); every size,
batch, prompt length, token count and step count is read from the golden tensors / ``meta.json`` so a
held-out set (batch 2, left-padded, other sizes) runs unchanged. Tolerances are the README's (fp32, CPU).
Per-token tensors are compared on valid rows only (left-pad rows are unspecified).
"""

from __future__ import annotations

import pytest
import torch

from tests.conformance.dexvla_goldens import DexVLASet, dexvla_sets, load_model, load_set
from tests.conftest import conformance_root
from xvla.export.policies.dexvla.model import unnormalize_min_max
from xvla.export.policies.dexvla.scaledp import timestep_frequencies

_ROOT = conformance_root()
_SETS = dexvla_sets(_ROOT) if _ROOT.is_dir() else []
SETS = [pytest.param(p, id=p.name) for p in _SETS] or [
    pytest.param(None, marks=pytest.mark.skip(reason=f"no DexVLA goldens under {_ROOT} (set XVLA_CONFORMANCE_DIR)"))]

LLM = dict(atol=2e-4, rtol=1e-4)
PER_LAYER = dict(atol=1e-4, rtol=0.0)
VISION = dict(atol=1e-5, rtol=0.0)
HEAD = dict(atol=1e-5, rtol=0.0)
SAMPLE = dict(atol=2e-5, rtol=0.0)  # README: sample.* trace fed golden inputs
ACTIONS = dict(atol=1e-5, rtol=0.0)  # the bar for actions fed golden inputs
E2E = dict(atol=2e-4, rtol=0.0)
E2E_UNNORM = dict(atol=4e-4, rtol=0.0)
LOSS = dict(atol=0.0, rtol=1e-5)
SKIPPED = {  # golden tensors we do not compare, and why
    "input.images_uint8", "input.state_raw", "input.stats.state_mean", "input.stats.state_std",
    "input.stats.action_min", "input.stats.action_max",  # inputs (state normalisation is checked)
    "head.input.x_noisy", "head.input.t_per_sample", "sample.noise_init", "train.actions", "train.is_pad",
    "train.noise", "train.timesteps",  # injected inputs
    "prompt.input_ids", "prompt.attention_mask", "prompt.pixel_values", "prompt.image_grid_thw",
    # processor outputs, compared in tests/runtime/test_dexvla_preprocess.py:
    "train.input_ids", "train.attention_mask", "train.labels",
}


def close(ours: torch.Tensor, gold: torch.Tensor, tol: dict, rows: torch.Tensor | None = None, name: str = "") -> float:
    assert tuple(ours.shape) == tuple(gold.shape), f"{name}: shape {tuple(ours.shape)} != golden {tuple(gold.shape)}"
    a, b = ours.detach().float(), gold.float()
    if rows is not None:  # (B, T) valid rows of (..., B, T, H) tensors
        a, b = a[..., rows, :], b[..., rows, :]
    err = (a - b).abs().max().item() if a.numel() else 0.0
    torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
    return err


@pytest.fixture(scope="module", params=SETS)
def gold(request) -> DexVLASet:
    return load_set(request.param)


@pytest.fixture(scope="module")
def model(gold: DexVLASet):
    return load_model(gold.root)[0]


@pytest.fixture(scope="module")
def prompt(gold: DexVLASet):
    g = gold.g
    return g["prompt.input_ids"], g["prompt.attention_mask"], g["prompt.pixel_values"], g["prompt.image_grid_thw"]


@pytest.fixture(scope="module")
def generation(gold: DexVLASet, model, prompt):
    return model.generate(*prompt, max_new_tokens=gold.max_new_tokens, eos_token_id=gold.eos_id,
                          pad_token_id=gold.pad_id_gen)


def test_loaded_parameter_count(gold: DexVLASet, model):
    n = sum(p.numel() for p in model.parameters())  # tied lm_head counted once
    assert n == int(gold.meta["tiny_model_n_params"])


def test_state_normalisation(gold: DexVLASet):
    g = gold.g
    ours = (g["input.state_raw"] - g["input.stats.state_mean"]) / (g["input.stats.state_std"] + 1e-8)
    close(ours, g["input.state_normalized"], dict(atol=1e-6, rtol=0.0), name="input.state_normalized")


def test_mrope_position_ids_and_deltas(gold: DexVLASet, model, prompt):
    ids, am, _, grid = prompt
    pos, deltas = model.rope_index(ids, grid, am)
    assert torch.equal(pos, gold.g["vlm.position_ids"])
    assert torch.equal(deltas, gold.g["vlm.rope_deltas"])


def test_vision_tower(gold: DexVLASet, model, prompt):
    _, _, pv, grid = prompt
    with torch.no_grad():
        close(model.visual.patch_embed(pv), gold.g["vlm.vision_patch_embed"], VISION, name="vlm.vision_patch_embed")
        close(model.image_embeds(pv, grid), gold.g["vlm.image_embeds"], VISION, name="vlm.image_embeds")


def test_vlm_forward(gold: DexVLASet, model, prompt):
    g = gold.g
    with torch.no_grad():
        out = model.vlm_forward(*prompt, position_ids=g["vlm.position_ids"])
    rows = gold.valid_rows(gold.prompt_len)
    close(out["hidden_states_per_layer"], g["vlm.hidden_states_per_layer"], PER_LAYER, rows,
          "vlm.hidden_states_per_layer")
    close(out["last_hidden_state"], g["vlm.last_hidden_state"], LLM, rows, "vlm.last_hidden_state")
    close(out["logits"], g["vlm.logits"], LLM, rows, "vlm.logits")


def test_tinyvla_branch_with_1d_positions(gold: DexVLASet, model, prompt):
    """``tinyvla=True`` runs without M-RoPE: plain arange positions on all three streams."""
    g = gold.g
    ids = prompt[0]
    pos = torch.arange(ids.shape[1])[None, None].expand(3, ids.shape[0], -1)
    with torch.no_grad():
        last = model.vlm_forward(*prompt, position_ids=pos)["last_hidden_state"]
    rows = gold.valid_rows(gold.prompt_len)
    close(last, g["tinyvla.last_hidden_state_1d_rope"], LLM, rows, "tinyvla.last_hidden_state_1d_rope")
    # the official mean includes left-pad rows: only pad-free samples are defined
    clean = rows.all(dim=1)
    close(last.mean(dim=1, keepdim=True)[clean], g["tinyvla.cond_mean"][clean], LLM, name="tinyvla.cond_mean")


def test_generation(gold: DexVLASet, generation):
    g = gold.g
    assert torch.equal(generation.new_tokens, g["gen.new_token_ids"]), "generated token ids differ"
    assert torch.equal(generation.sequences, g["gen.sequences"])
    n_rows = g["gen.all_hidden_states"].shape[1]
    close(generation.step_logits, g["gen.step_logits"], LLM, name="gen.step_logits")
    close(generation.prefill_hidden, g["gen.prefill_last_hidden"], LLM, gold.valid_rows(gold.prompt_len),
          "gen.prefill_last_hidden")
    close(generation.hidden, g["gen.all_hidden_states"], LLM, gold.valid_rows(n_rows), "gen.all_hidden_states")


def test_film_labels_and_condition(gold: DexVLASet, model):
    """Fed the golden generation rows, with the official labels (-100 on the prompt, 1 on generated)."""
    g = gold.g
    seq, hidden = g["gen.sequences"], g["gen.all_hidden_states"]
    n_new = torch.full((seq.shape[0],), seq.shape[1] - gold.prompt_len)
    b = seq.shape[0]
    labels = torch.cat([torch.full((b, gold.prompt_len), -100.0), torch.ones(b, int(n_new[0]))], 1)
    assert torch.equal(labels, g["film.labels"])
    with torch.no_grad():
        f = model.film(seq, hidden, gold.prompt_len, n_new)
    for k in ("action_hidden_states", "input_embeddings", "reasoning_embeddings", "identity"):
        close(f[k], g[f"film.{k}"], HEAD, name=f"film.{k}")


def test_scaledp_denoiser(gold: DexVLASet, model):
    g = gold.g
    head = model.policy_head
    x, t = g["head.input.x_noisy"], g["head.input.t_per_sample"]
    cond, st = g["film.action_hidden_states"], g["input.state_normalized"]
    with torch.no_grad():
        close(head.t_embedder.freqs.float(), g["head.dbg.bf16_freq_table"], dict(atol=1e-6, rtol=0.0),
              name="head.dbg.bf16_freq_table")
        close(timestep_frequencies(t, head.t_embedder.freqs), g["head.dbg.t_freq_per_sample"],
              dict(atol=1e-6, rtol=0.0), name="head.dbg.t_freq_per_sample")
        close(head.t_embedder(t), g["head.dbg.t_emb_per_sample"], HEAD, name="head.dbg.t_emb_per_sample")
        combine = head.combine(torch.cat([cond.squeeze(1), st], dim=-1))
        close(combine, g["head.dbg.combine_out"], HEAD, name="head.dbg.combine_out")
        close(head.cond_obs_emb(combine), g["head.dbg.cond_emb"], HEAD, name="head.dbg.cond_emb")
        close(head(x, t, cond, st), g["head.out.denoise_t_per_sample"], HEAD, name="head.out.denoise_t_per_sample")
        close(head(x, t[0], cond, st), g["head.out.denoise_t_scalar"], HEAD, name="head.out.denoise_t_scalar")


def test_ddim_schedule(gold: DexVLASet, model):
    g = gold.g
    assert torch.equal(model.sampler.timesteps, g["sample.timesteps"])
    assert model.sampler.timesteps.tolist() == gold.meta["scheduler"]["timesteps"]
    close(model.sampler.alphas_cumprod, g["sample.alphas_cumprod"], dict(atol=1e-7, rtol=0.0),
          name="sample.alphas_cumprod")


def test_sampling_with_per_sample_noise(gold: DexVLASet, model):
    g = gold.g
    trace: dict = {}
    cond, states = g["film.action_hidden_states"], g["input.state_normalized"]
    acts = model.sample_actions(cond, states, g["sample.noise_init"], trace)
    close(acts, g["sample.actions_per_sample_noise"], ACTIONS, name="sample.actions_per_sample_noise")
    close(torch.stack(trace["x"], 1), g["sample.trace_x"], SAMPLE, name="sample.trace_x")
    close(torch.stack(trace["eps"], 1), g["sample.trace_eps"], SAMPLE, name="sample.trace_eps")
    if "sample.actions_official_b1_noise" in g:  # the official b=1 noise shared by the whole batch
        shared = g["sample.noise_init"][:1].expand_as(g["sample.noise_init"])
        ours = model.sample_actions(g["film.action_hidden_states"], g["input.state_normalized"], shared)
        close(ours, g["sample.actions_official_b1_noise"], ACTIONS, name="sample.actions_official_b1_noise")
    key = "e2e.actions_unnormalized_per_sample_noise"
    if key in g:
        ours = unnormalize_min_max(acts, g["input.stats.action_min"], g["input.stats.action_max"])
        close(ours, g[key], E2E_UNNORM, name=key)


def test_end_to_end_from_prompt(gold: DexVLASet, model, prompt):
    g = gold.g
    out = model.predict(*prompt, g["input.state_normalized"], g["sample.noise_init"], gold.max_new_tokens,
                        gold.eos_id, gold.pad_id_gen)
    expected = g["e2e.actions"] if "e2e.actions" in g else g["sample.actions_per_sample_noise"]
    close(out["actions"], expected, E2E, name="e2e.actions")
    if "e2e.actions_unnormalized" in g:
        ours = unnormalize_min_max(out["actions"], g["input.stats.action_min"], g["input.stats.action_max"])
        close(ours, g["e2e.actions_unnormalized"], E2E_UNNORM, name="e2e.actions_unnormalized")


def test_training_loss(gold: DexVLASet, model):
    g = gold.g
    with torch.no_grad():
        out = model.training_loss(g["train.input_ids"], g["train.attention_mask"], g["train.labels"],
                                  g["prompt.pixel_values"], g["prompt.image_grid_thw"], g["train.actions"],
                                  g["input.state_normalized"], g["train.is_pad"], g["train.noise"],
                                  g["train.timesteps"])
    for k in ("loss", "llm_loss", "action_loss"):
        close(out[k].reshape(1), g[f"train.{k}"], LOSS, name=f"train.{k}")


COMPARED = {
    "input.state_normalized", "vlm.position_ids", "vlm.rope_deltas", "vlm.vision_patch_embed", "vlm.image_embeds",
    "vlm.logits", "vlm.last_hidden_state", "vlm.hidden_states_per_layer", "tinyvla.last_hidden_state_1d_rope",
    "tinyvla.cond_mean", "gen.sequences", "gen.new_token_ids", "gen.step_logits", "gen.prefill_last_hidden",
    "gen.all_hidden_states", "film.labels", "film.action_hidden_states", "film.input_embeddings",
    "film.reasoning_embeddings", "film.identity", "head.out.denoise_t_per_sample", "head.out.denoise_t_scalar",
    "head.dbg.bf16_freq_table", "head.dbg.t_freq_per_sample", "head.dbg.t_emb_per_sample", "head.dbg.combine_out",
    "head.dbg.cond_emb", "sample.timesteps", "sample.alphas_cumprod", "sample.actions_per_sample_noise",
    "sample.actions_official_b1_noise", "sample.trace_x", "sample.trace_eps", "e2e.actions",
    "e2e.actions_unnormalized", "e2e.actions_unnormalized_per_sample_noise", "train.loss", "train.llm_loss",
    "train.action_loss",
}


def test_every_golden_is_compared_or_explicitly_skipped(gold: DexVLASet):
    left = set(gold.g) - COMPARED - SKIPPED
    assert not left, f"golden tensors nobody compares: {sorted(left)}"
