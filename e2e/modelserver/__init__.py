"""A small but real model server for the lab: scikit-learn model, Prometheus metrics, fault knobs.

Run it with ``python -m e2e.modelserver`` (settings come from the environment, see config.py).
"""
