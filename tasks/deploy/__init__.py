"""Deploy one ensemble: publish, the backends (local, SageMaker), validate (on an endpoint), watch."""
