"""DexVLA (LeRobot community policy @ a0510c0f5): Qwen2-VL + FiLM + ScaleDP diffusion head."""
