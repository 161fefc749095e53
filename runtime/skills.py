"""Skill gating (which skill is the robot doing now?) and routing (which bundle serves that skill).

The VLM's skill classifier answers once per chunk and is noisy near skill boundaries. Acting
on every flip would switch prompts (and maybe bundles) back and forth, and with FLUSH drop
the plan each time. So the gate smooths the class probabilities with an EMA and only
switches when the challenger leads by a margin and the current skill has been held for a
minimum number of chunks (hysteresis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


@dataclass
class GateConfig:
    ema_alpha: float = 0.5  # weight of the newest chunk's probabilities
    switch_margin: float = 0.1  # challenger must lead the current skill by this much (smoothed probability)
    min_dwell_chunks: int = 2  # chunks a skill is held before another may replace it

    def __post_init__(self) -> None:
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ValueError(f"gating.ema_alpha must be in (0, 1], got {self.ema_alpha}")
        if not 0.0 <= self.switch_margin < 1.0:
            raise ValueError(f"gating.switch_margin must be in [0, 1), got {self.switch_margin}")
        if self.min_dwell_chunks < 0:
            raise ValueError(f"gating.min_dwell_chunks must be >= 0, got {self.min_dwell_chunks}")


@dataclass
class SkillDecision:
    skill_id: int
    name: str
    progress: float
    changed: bool
    probs: np.ndarray = field(repr=False)


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, np.float64) - np.max(x)
    e = np.exp(z)
    return e / e.sum()


class SkillGate:
    """Smoothed current skill with hysteresis. One per session."""

    def __init__(self, skills: Sequence[Mapping[str, Any]], config: GateConfig | None = None) -> None:
        if not skills:
            raise ValueError("skill gating needs a bundle with a skill vocabulary (manifest.skills)")
        self.ids = [int(s["id"]) for s in skills]
        self.names = [str(s["name"]) for s in skills]
        self.config = config or GateConfig()
        self.probs: np.ndarray | None = None
        self.current: int | None = None  # index into self.ids
        self.dwell = 0
        self.switches = 0

    def update(self, logits: np.ndarray, progress: np.ndarray | float | None = None) -> SkillDecision:
        """Feeds one chunk's skill logits [S] (and progress: scalar or per-skill [S]); returns the current skill."""
        logits = np.asarray(logits, np.float64).reshape(-1)
        if logits.shape[0] != len(self.ids):
            raise ValueError(f"skill_logits has {logits.shape[0]} classes, the bundle lists {len(self.ids)} skills")
        p = softmax(logits)
        a = self.config.ema_alpha
        self.probs = p if self.probs is None else a * p + (1.0 - a) * self.probs
        best = int(np.argmax(self.probs))
        changed = False
        if self.current is None:
            self.current, changed = best, True
            self.dwell = 0
        elif best != self.current and self.dwell >= self.config.min_dwell_chunks and (
            self.probs[best] - self.probs[self.current] >= self.config.switch_margin
        ):
            self.current, changed = best, True
            self.dwell = 0
            self.switches += 1
        else:
            self.dwell += 1
        return SkillDecision(self.ids[self.current], self.names[self.current],
                             _progress_for(progress, self.current), changed, self.probs.copy())


def _progress_for(progress: np.ndarray | float | None, index: int) -> float:
    if progress is None:
        return math.nan
    arr = np.asarray(progress, np.float64).reshape(-1)
    if arr.size == 0:
        return math.nan
    return float(arr[index] if arr.size > 1 else arr[0])


# ---------------------------------------------------------------------------------------- routing
@dataclass
class RoutingTable:
    """routes.yaml: skill name -> bundle name; anything unlisted goes to ``default``.

    ```yaml
    default: generalist            # bundle for every skill not routed below
    gate: generalist               # bundle whose skill head classifies (default: the default bundle)
    bundles:                       # name -> bundle folder (relative to this file)
      generalist: ../artifacts/tiny_v20
      pickup: ../artifacts/pickup_specialist
    routes:
      "pick up from": pickup
      press: pickup
    gating: {ema_alpha: 0.5, switch_margin: 0.1, min_dwell_chunks: 2}
    on_skill_change: flush         # flush | blend
    ```
    """

    bundles: dict[str, Path]
    default: str
    gate: str
    routes: dict[str, str] = field(default_factory=dict)
    gating: GateConfig = field(default_factory=GateConfig)
    on_skill_change: str = "flush"

    def __post_init__(self) -> None:
        if self.default not in self.bundles:
            raise ValueError(f"routes.default: {self.default!r} is not one of bundles {sorted(self.bundles)}")
        if self.gate not in self.bundles:
            raise ValueError(f"routes.gate: {self.gate!r} is not one of bundles {sorted(self.bundles)}")
        for skill, name in self.routes.items():
            if name not in self.bundles:
                raise ValueError(f"routes.routes[{skill!r}]: {name!r} is not one of bundles {sorted(self.bundles)}")
        if self.on_skill_change not in ("flush", "blend"):
            raise ValueError(f"routes.on_skill_change must be flush or blend, got {self.on_skill_change!r}")

    @classmethod
    def single(cls, bundle_dir: str | Path, name: str = "default") -> "RoutingTable":
        """The table of a plain ``--bundle DIR`` server: one bundle serves every skill."""
        return cls(bundles={name: Path(bundle_dir)}, default=name, gate=name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: Path = Path(".")) -> "RoutingTable":
        known = {"default", "gate", "bundles", "routes", "gating", "on_skill_change"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"routes: unknown key(s) {unknown}; known: {sorted(known)}")
        if not isinstance(data.get("bundles"), Mapping) or not data["bundles"]:
            raise ValueError("routes.bundles: a mapping of bundle name -> folder is required")
        bundles = {str(k): (base_dir / str(v)).resolve() for k, v in data["bundles"].items()}
        default = str(data.get("default") or next(iter(bundles)))
        gating = GateConfig(**dict(data.get("gating") or {}))
        return cls(bundles=bundles, default=default, gate=str(data.get("gate") or default),
                   routes={str(k): str(v) for k, v in (data.get("routes") or {}).items()},
                   gating=gating, on_skill_change=str(data.get("on_skill_change", "flush")))

    @classmethod
    def load(cls, path: str | Path) -> "RoutingTable":
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read routes: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: routes must be a YAML mapping")
        return cls.from_dict(data, base_dir=path.parent)

    def route_for(self, skill_name: str | None) -> str:
        if skill_name is None:
            return self.default
        return self.routes.get(skill_name, self.default)

    def check_skills(self, known_skills: Sequence[str]) -> None:
        """Every routed skill must exist in the gate bundle's vocabulary (a typo would never route)."""
        missing = sorted(set(self.routes) - set(known_skills))
        if missing:
            raise ValueError(f"routes.routes: skill(s) {missing} are not in the gate bundle's skills {list(known_skills)}")
