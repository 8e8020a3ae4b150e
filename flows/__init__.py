"""Prefect flows: build, deploy, retire, release, watch; and the `mme` CLI.

No module here uses ``from __future__ import annotations``: Prefect validates a flow's
parameters with a pydantic model built from its annotations, and when a flow runs as a
subflow of a deployment, string annotations (``Literal[...]``, ``SageMakerOptions``) failed to
resolve ("DeployModel is not fully defined"). Real annotation objects avoid that.
"""
