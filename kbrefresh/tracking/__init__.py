"""Tracking room: MLflow runs for every build, the model registry (KB versions as registered
models with ``champion`` / ``challenger`` aliases), the pyfunc model and the reports.
"""
