"""DexVLA runtime side: torch-free preprocessing (prompt, images, M-RoPE positions)."""
