"""Artifact producers named by ``ensemble.yaml``: fetch, export, compile, DALI, envpack,
classifiers; the registry that runs them, and their content-addressed cache."""
