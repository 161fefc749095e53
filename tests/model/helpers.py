"""Small builders shared by the model tests (tiny models, synthetic observations)."""

from __future__ import annotations

import torch

from xvla.export.policies.xvla.model import XVLA, XVLAConfig


def tiny_model(preset: str = "tiny", seed: int = 0, **overrides) -> XVLA:
    torch.manual_seed(seed)
    return XVLA(XVLAConfig.preset(preset, **overrides)).eval()


def randomise_(module: torch.nn.Module, seed: int, std: float = 0.5) -> None:
    """Give every parameter non-trivial values (fresh hubs are zero, DomainAwareLinear biases are zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def observation(model: XVLA, batch: int, seed: int = 0, views: int = 3, size: int = 224) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.florence_config.text_config.vocab_size
    ids = torch.ones(batch, 50, dtype=torch.long)
    for b in range(batch):
        n = 5 + 3 * b
        ids[b, 0] = 0
        ids[b, 1:n] = torch.randint(3, vocab, (n - 1,), generator=g)
        ids[b, n] = 2
    mask = torch.ones(batch, views, dtype=torch.bool)
    if batch > 1:
        mask[1, views - 1] = False
    return {
        "input_ids": ids,
        "image_input": torch.randn(batch, views, 3, size, size, generator=g),
        "image_mask": mask,
        "domain_id": torch.arange(batch, dtype=torch.long) % model.config.num_domains,
        "proprio": torch.randn(batch, model.action_space.dim, generator=g),
    }


def noise(model: XVLA, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.config.num_actions, model.action_space.model_dim, generator=g)
