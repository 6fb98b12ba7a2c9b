"""The gate stage."""
