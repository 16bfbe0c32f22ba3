"""Batch image prediction on Apache Beam: options, config, graph and entry point."""
