"""The A/B analysis stage: compare two variants' logged outcomes with a significance test."""
