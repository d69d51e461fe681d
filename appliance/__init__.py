"""Inference Engine appliance: TF-Serving-compatible model serving behind Envoy."""

__version__ = "0.1.0"
