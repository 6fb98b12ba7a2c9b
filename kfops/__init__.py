"""kfops: Kubeflow Pipelines components from raw tabular data to a served, monitored model."""

__version__ = "0.1.0"
