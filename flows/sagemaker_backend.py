"""Composition only: the SageMaker backend lives in :mod:`tasks.deploy.backends.sagemaker`.

Kept so ``from flows.sagemaker_backend import SageMakerOptions`` (older scripts, notebooks)
goes on working; new code imports from ``tasks.deploy.backends.sagemaker``.
"""

from tasks.deploy.backends.sagemaker import (  # noqa: F401
                                      SageMakerBackend,
                                      SageMakerOptions,
                                      check_builds,
                                      make_plan,
                                      plan_to_json,
)
