"""ModelRollout: safe, audited roll-outs of machine-learning model versions on Kubernetes."""

__version__ = "0.1.0"
