"""ftpipe: fine-tune pre-trained transformers as a Kubeflow Pipelines v2 DAG."""

__version__ = "0.1.0"
