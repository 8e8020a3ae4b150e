"""AWS adapters: boto3 clients, SageMaker deploy and cleanup, IAM documents, the instance catalog,
the runtime invoke and its retry policy, the pre-flight, the S3 -> Prefect Lambda."""
