"""Robots as data: one module per embodiment (action layout, state layouts, ids), looked up by name."""

from __future__ import annotations

from xvla.core.embodiments.layout import ActionLayout, Part, PartKind, safe_action

__all__ = ["ActionLayout", "Part", "PartKind", "safe_action", "layout_for"]


def layout_for(name: str) -> ActionLayout:
    """The action layout of a named embodiment (``r1pro``)."""
    from xvla.core.embodiments import r1pro

    known = {r1pro.NAME: r1pro.R1PRO}
    if name not in known:
        raise KeyError(f"unknown embodiment {name!r}; known: {sorted(known)}")
    return known[name]
