"""Beam-free image work: decoding, resizing and the tensors a model is fed."""
