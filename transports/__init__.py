"""Transports: how audio gets into and out of a graph (files, websockets, devices)."""
