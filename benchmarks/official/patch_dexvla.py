"""Applies the conformance run's minimal patches to the official DexVLA code (LeRobot @ a0510c0f5).

    python benchmarks/official/patch_dexvla.py CODE_DIR

Run once by ``setup_dexvla_env.sh`` (never at test or benchmark time). Each patch is an exact string
replacement that must match the pinned source the stated number of times, so a different checkout fails
loudly instead of being half-patched. All are no-ops for the official bf16 CUDA deployment; they are the
ones listed in ``shared/conformance/dexvla/README.md`` ("Patches to the official code"):
``"cuda"`` -> the model's device, hard-coded ``torch.bfloat16`` compute dtype -> the model dtype (the bf16
timestep *frequency table* is kept), and ``film_forward``'s literal pad id 151643 -> a module constant
``DEXVLA_PAD_TOKEN_ID`` that the caller sets to its tokenizer's pad id.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = "lerobot/common/policies/dexvla"
PATCHES: dict[str, list[tuple[str, str, int]]] = {
    f"{ROOT}/modeling_dexvla.py": [
        ('.to(device="cuda", dtype=torch.bfloat16)', '.to(device="cpu", dtype=torch.float32)', 1),
        ('input_ids = input_ids.to("cuda")', "input_ids = input_ids.to(self.model.device)", 2),
    ],
    f"{ROOT}/qwe2_vla/modeling_qwen2_vla.py": [
        ("self.computed_type = torch.bfloat16", "self.computed_type = self.dtype", 1),
        ('.to("cuda")', ".to(self.device)", 3),
        ('device="cuda")', "device=self.device)", 3),
        ("self.norm1(hidden_states).to(torch.bfloat16)", "self.norm1(hidden_states).to(self.norm1.weight.dtype)", 1),
        ("temp = input_ids[i] == 151643", "temp = input_ids[i] == DEXVLA_PAD_TOKEN_ID", 1),
        ("\nimport gc\n", "\nimport gc\n\nDEXVLA_PAD_TOKEN_ID = 151643  # patched: film_forward's pad id\n", 1),
    ],
    f"{ROOT}/policy_heads/modeling_scaledp.py": [
        ("return embedding.to(dtype=torch.bfloat16)", "return embedding", 1),
        ("t_emb = self.mlp(t_freq)", "t_emb = self.mlp(t_freq.to(self.mlp[0].weight.dtype))", 1),
        ("torch.randn((b, tp, action_dim)).cuda()", "torch.randn((b, tp, action_dim)).to(hidden_states.device)", 1),
    ],
}


def main(code: Path) -> None:
    for rel, patches in PATCHES.items():
        path = code / rel
        text = path.read_text()
        if all(new in text for _, new, _ in patches):
            print(f"already patched: {rel}")
            continue
        for old, new, count in patches:
            found = text.count(old)
            if found != count:
                raise SystemExit(f"{rel}: expected {count} x {old!r}, found {found}")
            text = text.replace(old, new)
        path.write_text(text)
        print(f"patched: {rel} ({len(patches)} replacements)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
