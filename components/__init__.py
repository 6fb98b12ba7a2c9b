"""The suite's pipeline stages: one folder each, plain logic beside a thin KFP wrapper."""
