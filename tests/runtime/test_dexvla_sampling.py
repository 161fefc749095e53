"""The runtime's numpy DDIM and FiLM spans equal the export side's torch versions (which the conformance
tests check against the official code)."""

from __future__ import annotations

import numpy as np
import pytest

from xvla.runtime.policies.dexvla.sampling import DDIM, film_row_masks

torch = pytest.importorskip("torch")

from xvla.export.policies.dexvla.film import film_masks  # noqa: E402
from xvla.export.policies.dexvla.sampler import DDIMSampler  # noqa: E402


@pytest.mark.parametrize("steps", [10, 7, 1])
def test_numpy_ddim_equals_torch_sampler(steps):
    ours, ref = DDIM(100, steps), DDIMSampler(100, steps)
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((2, 5, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3)).astype(np.float32)

    def eps_np(x, t):
        return np.tanh(x @ w + t[:, None, None] / 100).astype(np.float32)

    got = ours.sample(eps_np, noise)
    want = ref.sample(lambda x, t: torch.from_numpy(eps_np(x.numpy(), np.full(x.shape[0], int(t)))),
                      torch.from_numpy(noise)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert np.abs(got).max() > 0


def test_film_spans_equal_torch_version():
    seqs = np.array([[1000, 1000, 5, 6, 7, 8, 9, 1002, 1002], [4, 5, 6, 1000, 7, 8, 9, 10, 11]])
    n_new = np.array([2, 4])
    got = film_row_masks(seqs, 5, n_new, 1000, 8)
    want = film_masks(torch.from_numpy(seqs), 5, torch.from_numpy(n_new), 1000, 8)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b.numpy().astype(np.float32))
    # sample 0: pads skipped, one reasoning row; sample 1: a pad-id token inside the prompt moves start
    inp, rsn = got
    assert inp[0].tolist() == [0, 0, 1, 1, 1, 0, 0, 0] and inp[1].tolist() == [0, 1, 1, 1, 1, 0, 0, 0]
    assert rsn[0].tolist() == [0, 0, 0, 0, 0, 1, 0, 0] and rsn[1].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]


def test_bad_step_count_is_named():
    with pytest.raises(ValueError, match="num_inference_steps"):
        DDIM(100, 0)
