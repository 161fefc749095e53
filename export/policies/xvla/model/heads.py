"""v20 BEHAVIOR-1K heads on the VLM features (present only with ``config.skill_conditioning``).

The v20 code is not public; these are our names (documented in docs/model.md):

* ``skill_heads.classifier``: Linear(P, num_skills) on the token-mean of ``vlm_features``
  -> ``skill_logits``. ``generate_actions(skill_id=None)`` uses its argmax as the skill.
* ``skill_heads.progress``: Linear(P, num_skills); ``progress[b, s] = sigmoid(logit[b, s])`` is
  the progress of sample b through skill s (trained with BCE-with-logits on the active skill).
  All skills are returned so one exported graph can output every skill's progress; pick the
  active one with :func:`select_skill`.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class SkillHeads(nn.Module):
    def __init__(self, dim: int, num_skills: int) -> None:
        super().__init__()
        self.num_skills = num_skills
        self.classifier = nn.Linear(dim, num_skills)
        self.progress = nn.Linear(dim, num_skills)

    def forward(self, vlm_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """vlm_features [B, N, P] -> {"skill_logits": [B, S], "progress": [B, S] in [0, 1]}."""
        pooled = vlm_features.mean(dim=1)  # [B, P]
        return {"skill_logits": self.classifier(pooled), "progress": torch.sigmoid(self.progress(pooled))}


def select_skill(per_skill: torch.Tensor, skill_id: torch.Tensor) -> torch.Tensor:
    """[B, S] values, skill_id [B] -> [B] value of each sample's skill (a gather, export-friendly)."""
    return per_skill.gather(1, skill_id.reshape(-1, 1).to(torch.long)).squeeze(1)
