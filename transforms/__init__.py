"""The pipeline's stages as composite PTransforms, and the pure functions they are made of."""
