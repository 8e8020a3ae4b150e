"""The local multi-model endpoint: SageMaker's runtime API in front of a real Triton server
(its HTTP front end, model manager, eviction, disk cache, supervision, process and client)."""
