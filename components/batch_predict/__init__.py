"""The batch prediction stage."""
