"""v20 BEHAVIOR-1K extensions: task/skill prompt hubs, skill classifier, progress head."""

from __future__ import annotations

import pytest
import torch

from tests.model.helpers import noise, observation, randomise_, tiny_model
from xvla.export.policies.xvla.model import XVLA


@pytest.fixture(scope="module")
def v20():
    return tiny_model("tiny-r1pro-v20")


def _base_from(v20: XVLA) -> XVLA:
    """The same weights without the v20 parts."""
    base = tiny_model("tiny-r1pro")
    state = {k: v for k, v in v20.state_dict().items() if k in base.state_dict()}
    base.load_state_dict(state, strict=True)
    return base


def test_keys_and_zero_init(v20) -> None:
    keys = set(v20.state_dict())
    for k in ("transformer.task_prompt_hub.weight", "transformer.skill_prompt_hub.weight",
              "skill_heads.classifier.weight", "skill_heads.progress.weight"):
        assert k in keys
    cfg = v20.config
    width = cfg.len_soft_prompts * cfg.hidden_size
    assert v20.transformer.task_prompt_hub.weight.shape == (cfg.num_tasks, width) == (50, width)
    assert v20.transformer.skill_prompt_hub.weight.shape == (cfg.num_skills, width) == (34, width)
    assert torch.count_nonzero(v20.transformer.task_prompt_hub.weight) == 0
    assert torch.count_nonzero(v20.transformer.skill_prompt_hub.weight) == 0
    assert not any(k.startswith("skill_heads") or "prompt_hub" in k and "soft" not in k
                   for k in tiny_model("tiny-r1pro").state_dict())


def test_additive_zero_prompts_leave_the_base_output_unchanged(v20) -> None:
    obs, x1 = observation(v20, batch=2), noise(v20, 2)
    base = _base_from(v20)
    task, skill = torch.tensor([3, 49]), torch.tensor([0, 33])
    with_prompts = v20.generate_actions(**obs, steps=3, noise=x1, task_id=task, skill_id=skill)
    assert torch.equal(with_prompts, base.generate_actions(**obs, steps=3, noise=x1))


def test_prompts_change_the_output_once_trained(v20) -> None:
    model = tiny_model("tiny-r1pro-v20")
    model.load_state_dict(v20.state_dict())
    randomise_(model.transformer.skill_prompt_hub, seed=3)
    obs, x1 = observation(model, batch=2), noise(model, 2)
    a = model.generate_actions(**obs, steps=2, noise=x1, skill_id=torch.tensor([1, 1]))
    b = model.generate_actions(**obs, steps=2, noise=x1, skill_id=torch.tensor([2, 2]))
    assert not torch.allclose(a, b)


def test_replace_mode_ignores_the_domain_prompt() -> None:
    model = tiny_model("tiny-r1pro-v20", prompt_mode="replace")
    randomise_(model.transformer.task_prompt_hub, seed=4)
    tr = model.transformer
    domain, task = torch.tensor([0, 5]), torch.tensor([2, 2])
    got = tr.prompts(domain, task, None)
    assert torch.equal(got, tr.task_prompt_hub(task).reshape(2, tr.len_soft_prompts, tr.hidden_size))
    assert torch.equal(got[0], got[1])  # different domains, same prompt
    add = tiny_model("tiny-r1pro-v20")
    add.load_state_dict(model.state_dict())
    expected = add.transformer.soft_prompt_hub(domain) + add.transformer.task_prompt_hub(task)
    assert torch.equal(add.transformer.prompts(domain, task, None), expected.reshape(2, tr.len_soft_prompts, -1))


def test_skill_heads_shapes(v20) -> None:
    obs = observation(v20, batch=3)
    with torch.no_grad():
        enc = v20.forward_vlm(obs["input_ids"], obs["image_input"], obs["image_mask"])
        out = v20.skill_heads(enc["vlm_features"])
    assert out["skill_logits"].shape == (3, 34) and out["progress"].shape == (3, 34)
    assert torch.all((out["progress"] >= 0) & (out["progress"] <= 1))


def test_skill_auto_prediction_is_the_argmax_and_matches_passing_it() -> None:
    model = tiny_model("tiny-r1pro-v20")
    randomise_(model.transformer.skill_prompt_hub, seed=5)
    randomise_(model.skill_heads, seed=6)
    obs, x1 = observation(model, batch=3), noise(model, 3)
    auto = model.generate_actions(**obs, steps=2, noise=x1, return_aux=True)
    with torch.no_grad():
        enc = model.forward_vlm(obs["input_ids"], obs["image_input"], obs["image_mask"])
        heads = model.skill_heads(enc["vlm_features"])
    expected = heads["skill_logits"].argmax(dim=-1)
    assert torch.equal(auto["skill_id"], expected)
    assert torch.equal(auto["skill_logits"], heads["skill_logits"])
    assert torch.equal(auto["progress"], heads["progress"][torch.arange(3), expected])
    explicit = model.generate_actions(**obs, steps=2, noise=x1, skill_id=expected)
    assert torch.equal(auto["actions"], explicit)
    wrong = model.generate_actions(**obs, steps=2, noise=x1, skill_id=(expected + 1) % 34)
    assert not torch.allclose(explicit, wrong)


def test_models_without_heads_reject_ids_and_return_empty_aux() -> None:
    model = tiny_model("tiny")
    obs = observation(model, batch=1)
    with pytest.raises(ValueError, match="skill_conditioning"):
        model.generate_actions(**obs, steps=1, task_id=torch.tensor([0]))
    aux = model.generate_actions(**obs, steps=1, return_aux=True)
    assert aux["actions"].shape == (1, 30, 20) and aux["skill_logits"] is None and aux["progress"] is None
