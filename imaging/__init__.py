"""Images without Beam: reading their headers, decoding, resizing and re-encoding them, and
preparing the tensors a model takes."""
