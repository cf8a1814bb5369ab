"""Concrete tools (pipelines) assembled from the engine, the providers and the artifact store."""
