"""Infrastructure adapters: object stores and model-repository tarballs."""
