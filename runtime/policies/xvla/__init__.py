"""X-VLA (Florence-2 VLM, optional DA3 geometry, soft-prompted flow-matching action transformer) on exported engines."""
