"""Model code: one module per block of X-VLA (Florence-2 encoder, action transformer, DA3 geometry)."""
