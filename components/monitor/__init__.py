"""The monitor stage: drift of a window of predictions (or any data) against the training data."""
