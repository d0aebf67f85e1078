"""The model registry: MLflow runs, versions and aliases (see store.py, refs.py)."""
