"""The tiny model end to end: shapes, masked views, batch independence, injected noise."""

from __future__ import annotations

import pytest
import torch

from tests.model.helpers import noise, observation, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny-r1pro")


def test_forward_vlm_shapes_and_masked_views(model) -> None:
    obs = observation(model, batch=2)
    with torch.no_grad():
        enc = model.forward_vlm(obs["input_ids"], obs["image_input"], obs["image_mask"])
    p = model.config.florence_config.projection_dim
    assert enc["vlm_features"].shape == (2, 100, p)
    assert enc["aux_visual_inputs"].shape == (2, 100, p)
    assert torch.count_nonzero(enc["aux_visual_inputs"][1, 50:]) == 0  # sample 1, view 2 absent
    assert torch.count_nonzero(enc["aux_visual_inputs"][0, 50:]) > 0


def test_absent_view_pixels_are_ignored(model) -> None:
    obs = observation(model, batch=2)
    other = dict(obs, image_input=obs["image_input"].clone())
    other["image_input"][1, 2] = 1e3  # garbage in the masked slot
    a = model.generate_actions(**obs, steps=2, noise=noise(model, 2))
    b = model.generate_actions(**other, steps=2, noise=noise(model, 2))
    assert torch.equal(a, b)


def test_batch_equals_per_sample_runs(model) -> None:
    obs, x1 = observation(model, batch=3), noise(model, 3)
    batched = model.generate_actions(**obs, steps=3, noise=x1)
    assert batched.shape == (3, 30, 23)
    for b in range(3):
        one = {k: v[b:b + 1] for k, v in obs.items()}
        single = model.generate_actions(**one, steps=3, noise=x1[b:b + 1])
        assert (single - batched[b:b + 1]).abs().max().item() < 1e-5


def test_noise_argument_replaces_the_random_draw(model) -> None:
    obs = observation(model, batch=1)
    torch.manual_seed(7)
    drawn = torch.randn(1, 30, 23)
    torch.manual_seed(7)
    implicit = model.generate_actions(**obs, steps=2)
    explicit = model.generate_actions(**obs, steps=2, noise=drawn)
    assert torch.equal(implicit, explicit)
    other = model.generate_actions(**obs, steps=2, noise=drawn + 1)
    assert not torch.equal(explicit, other)


def test_bad_inputs_name_the_field(model) -> None:
    obs = observation(model, batch=2)
    with pytest.raises(ValueError, match="noise"):
        model.generate_actions(**obs, noise=torch.zeros(2, 30, 5))
    with pytest.raises(ValueError, match="image_mask"):
        model.forward_vlm(obs["input_ids"], obs["image_input"], obs["image_mask"][:, :2])
    with pytest.raises(ValueError, match="proprio"):
        model.generate_actions(**dict(obs, proprio=obs["proprio"][:1]))
    with pytest.raises(ValueError, match="steps"):
        model.generate_actions(**obs, steps=0)
    with pytest.raises(ValueError, match="geometry"):
        model.generate_actions(**obs, extrinsics=torch.zeros(2, 3, 4, 4), intrinsics=torch.zeros(2, 3, 3, 3))


def test_action_transformer_exports_with_a_dynamic_batch(model) -> None:
    """The exporter traces one denoising step with a dynamic batch: no data-dependent branches."""
    from torch.export import Dim, export

    class Step(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x_t, t, proprio, vlm, aux, domain_id):
            pm, xm = self.m.action_space.preprocess(proprio, x_t)
            return self.m.transformer(domain_id=domain_id, action_with_noise=xm, proprio=pm, t=t,
                                      vlm_features=vlm, aux_visual_inputs=aux)

    p = model.config.florence_config.projection_dim

    def args(b):
        g = torch.Generator().manual_seed(b)
        return (torch.randn(b, 30, 23, generator=g), torch.rand(b, generator=g), torch.randn(b, 23, generator=g),
                torch.randn(b, 100, p, generator=g), torch.randn(b, 100, p, generator=g),
                torch.arange(b, dtype=torch.long))

    batch = Dim("batch", min=1, max=16)
    ep = export(Step(model), args(2), dynamic_shapes=tuple({0: batch} for _ in range(6)))
    a3 = args(3)
    with torch.no_grad():
        assert (ep.module()(*a3) - Step(model)(*a3)).abs().max().item() < 1e-5
