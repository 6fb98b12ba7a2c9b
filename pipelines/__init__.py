"""Pipelines composed from the suite's components, and their local runner."""
