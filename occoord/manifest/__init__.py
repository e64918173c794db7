"""Manifests v1: the model (frozen dataclasses), value checks, decoding, building, the JSON Schema."""
