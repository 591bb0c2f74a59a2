"""Voxgraph: real-time voice pipelines as graphs of async processors."""
