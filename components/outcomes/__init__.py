"""Outcomes: ground-truth labels by request id, and live model performance from them."""
