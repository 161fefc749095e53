"""FiLM fusion of the prompt and the generated reasoning into the head's condition (our own code).

Official ``film_forward`` per sample: ``start`` = number of pad-id tokens in the row, ``end`` = prompt
length; ``input = input_action_proj(mean(h[start:end]))``, ``reasoning = reasoning_action_proj(mean(h[end:]))``
over the generated rows (all but the last generated token), ``out = input * (1 + scale_fc(reasoning)) +
shift_fc(reasoning) + mean(h[start:end])`` -> (B, 1, H).  We compute the two means as masked means over
(B, T) row masks so a whole batch (with its own spans per sample) runs at once.
"""

from __future__ import annotations

import torch
from torch import nn


class ActionProjector(nn.Module):
    """mean-pool rows -> Linear -> GELU(erf) -> Linear (key names ``mlps.0`` / ``mlps.2``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlps = nn.ModuleList([nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim), nn.Dropout(0.0)])

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, H) already pooled
        x = pooled
        for layer in self.mlps:
            x = layer(x)
        return x


class FiLM(nn.Module):
    def __init__(self, feature_dim: int, condition_dim: int) -> None:
        super().__init__()
        self.scale_fc = nn.Linear(condition_dim, feature_dim)
        self.shift_fc = nn.Linear(condition_dim, feature_dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return x * (1 + self.scale_fc(condition)) + self.shift_fc(condition)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h (B, T, H), mask (B, T) in {0, 1} -> (B, H).  An empty span gives zeros (official: NaN)."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def film_condition(input_action_proj: ActionProjector, reasoning_action_proj: ActionProjector, reasoning_film: FiLM,
                   hidden: torch.Tensor, input_mask: torch.Tensor, reasoning_mask: torch.Tensor) -> dict:
    """hidden (B, T, H) = prompt rows + generated rows; masks (B, T) -> the head condition (B, 1, H) + parts."""
    identity = masked_mean(hidden, input_mask)  # (B, H)
    input_embeddings = input_action_proj(identity)
    reasoning_embeddings = reasoning_action_proj(masked_mean(hidden, reasoning_mask))
    out = reasoning_film(input_embeddings, reasoning_embeddings) + identity
    return {"action_hidden_states": out.unsqueeze(1), "input_embeddings": input_embeddings,
            "reasoning_embeddings": reasoning_embeddings, "identity": identity}


def film_masks(sequences: torch.Tensor, prompt_len: int, n_new: torch.Tensor, pad_token_id: int,
               total_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row masks (B, total_rows) for the prompt span [start:end] and the reasoning span [end:end+n_new-1].

    sequences (B, L + N): prompt + generated ids; n_new (B,): tokens each sample generated (to its EOS).
    ``start`` counts pad ids in the sample's own tokens (prompt + its generated tokens), as the official code
    counts them in the row of a batch-1 run.
    """
    b = sequences.shape[0]
    rows = torch.arange(total_rows, device=sequences.device)[None].expand(b, -1)
    own = torch.arange(sequences.shape[1], device=sequences.device)[None] < (prompt_len + n_new)[:, None]
    start = ((sequences == pad_token_id) & own).sum(dim=1)  # (B,)
    input_mask = (rows >= start[:, None]) & (rows < prompt_len)
    reasoning_mask = (rows >= prompt_len) & (rows < prompt_len + n_new[:, None] - 1)
    return input_mask, reasoning_mask
