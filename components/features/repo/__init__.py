"""The suite's Feast feature repository: ``feature_store.yaml`` (local) and the definitions (definitions.py)."""
