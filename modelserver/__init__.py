"""appliance-model-server: a TF-Serving-compatible model server (REST and gRPC)."""
