"""Object stores (local folder or S3), their concurrent publish, and model-repository tarballs."""
