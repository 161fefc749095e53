"""Skill gate hysteresis and the routing table, with forced classifier logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xvla.runtime.skills import GateConfig, RoutingTable, SkillGate

SKILLS = [{"id": 0, "name": "navigate to"}, {"id": 1, "name": "pick up from"}, {"id": 2, "name": "press"}]
A, B = [40.0, 0.0, 0.0], [0.0, 40.0, 0.0]  # softmax is one-hot to 1e-17


def test_hysteresis_hand_computed():
    gate = SkillGate(SKILLS, GateConfig(ema_alpha=0.5, switch_margin=0.2, min_dwell_chunks=2))
    d = gate.update(A)
    assert (d.skill_id, d.changed) == (0, True) and d.probs == pytest.approx([1, 0, 0])
    d = gate.update(B)  # smoothed [0.5, 0.5, 0]: a tie, the incumbent stays
    assert (d.skill_id, d.changed) == (0, False) and d.probs == pytest.approx([0.5, 0.5, 0])
    d = gate.update(B)  # [0.25, 0.75, 0]: B leads by 0.5 but skill 0 was held only 1 chunk (< 2)
    assert (d.skill_id, d.changed) == (0, False) and d.probs == pytest.approx([0.25, 0.75, 0])
    d = gate.update(B)  # [0.125, 0.875, 0]: held 2 chunks, lead 0.75 >= 0.2 -> switch
    assert (d.skill_id, d.name, d.changed) == (1, "pick up from", True)
    assert gate.switches == 1


def test_single_noisy_chunk_does_not_switch():
    gate = SkillGate(SKILLS, GateConfig(ema_alpha=0.5, switch_margin=0.1, min_dwell_chunks=0))
    seq = [A, A, A, B, A, A]
    ids = [gate.update(x).skill_id for x in seq]
    assert ids == [0] * 6  # after B the smoothed probs are [0.5, 0.5]: no lead, no switch


def test_margin_blocks_a_small_lead():
    gate = SkillGate(SKILLS, GateConfig(ema_alpha=1.0, switch_margin=0.3, min_dwell_chunks=0))
    gate.update(A)
    # probabilities [0.4, 0.6, 0]: lead 0.2 < 0.3
    d = gate.update([math.log(0.4), math.log(0.6), -1e9])
    assert d.skill_id == 0
    d = gate.update([math.log(0.3), math.log(0.7), -1e9])  # lead 0.4 >= 0.3
    assert d.skill_id == 1 and d.changed


def test_progress_of_the_current_skill():
    gate = SkillGate(SKILLS)
    d = gate.update(B, progress=np.array([0.1, 0.7, 0.3]))
    assert d.progress == pytest.approx(0.7)
    assert math.isnan(gate.update(B, progress=None).progress)


def test_gate_rejects_wrong_class_count():
    with pytest.raises(ValueError, match="3 skills"):
        SkillGate(SKILLS).update([1.0, 2.0])


def test_routing_table_from_yaml(tmp_path):
    (tmp_path / "routes.yaml").write_text(
        "default: generalist\n"
        "bundles:\n  generalist: gen\n  pickup: ../pick\n"
        "routes:\n  'pick up from': pickup\n  press: pickup\n"
        "gating: {ema_alpha: 0.3, switch_margin: 0.05, min_dwell_chunks: 1}\n"
        "on_skill_change: blend\n"
    )
    table = RoutingTable.load(tmp_path / "routes.yaml")
    assert table.bundles["generalist"] == (tmp_path / "gen").resolve()
    assert table.bundles["pickup"] == (tmp_path.parent / "pick").resolve()
    assert table.gate == "generalist" and table.on_skill_change == "blend"
    assert table.gating.ema_alpha == 0.3
    assert table.route_for("pick up from") == "pickup"
    assert table.route_for("press") == "pickup"
    assert table.route_for("navigate to") == "generalist"
    assert table.route_for(None) == "generalist"
    table.check_skills([s["name"] for s in SKILLS])


def test_routing_table_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"routes.routes\['press'\]"):
        RoutingTable.from_dict({"bundles": {"g": "x"}, "routes": {"press": "nope"}})
    with pytest.raises(ValueError, match="routes.default"):
        RoutingTable.from_dict({"bundles": {"g": "x"}, "default": "h"})
    with pytest.raises(ValueError, match="unknown key"):
        RoutingTable.from_dict({"bundles": {"g": "x"}, "rutes": {}})
    with pytest.raises(ValueError, match="gating.ema_alpha"):
        RoutingTable.from_dict({"bundles": {"g": "x"}, "gating": {"ema_alpha": 0}})
    table = RoutingTable.from_dict({"bundles": {"g": "x"}, "routes": {"presss": "g"}})
    with pytest.raises(ValueError, match="presss"):
        table.check_skills(["press"])
