"""Serving the suite's models on KServe: predictor, dynamic batcher, metrics, payload logging."""
