"""Artifact producers named by ``ensemble.yaml``: fetch, export, compile, DALI, envpack, classifiers."""
