"""The Triton settings of the SageMaker Triton container, set explicitly through the container
Environment its ``serve`` script reads (triton-inference-server/server ``docker/sagemaker/serve``).

Why explicit: the script's defaults are chosen for one model, not a multi-model endpoint.

- ``SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE`` -> ``--backend-config=python,shm-default-byte-size``:
  the shared-memory region every Python-backend model *instance* starts with; the script's
  default is 16 MiB. An MME with many loaded Python models (our tokenizers, pooling and DALI
  steps are Python-backend models) fills ``/dev/shm`` with them, and the next load fails with
  "Unable to initialize shared memory key". A step touches well under 1 MiB (DESIGN.md), and
  the region grows on demand, so the default here is 4 MiB: the smallest every Python backend
  release accepts (older ones refuse less than 4 MiB; newer ones 1 MiB).
- ``SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE`` -> ``shm-growth-byte-size``: the step the region
  grows by (default 1 MiB, the script's).
- ``SAGEMAKER_TRITON_LOG_VERBOSE`` -> ``--log-verbose``: the script turns verbose logging ON
  unless told otherwise, i.e. CloudWatch lines for every request of every model (paid per GB);
  the default here is 0 (off). Info, warning and error logs are Triton's defaults (on);
  ``--env SAGEMAKER_TRITON_LOG_INFO=false`` and the like still reach the container.

Each is a deploy option; a value given through ``--env`` as well must agree with it.
"""

from __future__ import annotations

from collections.abc import Mapping

from infra.errors import InvalidInput

SHM_DEFAULT_ENV = "SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE"
SHM_GROWTH_ENV = "SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE"
LOG_VERBOSE_ENV = "SAGEMAKER_TRITON_LOG_VERBOSE"

MIB = 1024 * 1024
DEFAULT_SHM_BYTES = 4 * MIB
DEFAULT_SHM_GROWTH_BYTES = 1 * MIB
DEFAULT_LOG_VERBOSE = 0
MIN_SHM_BYTES = 4 * MIB  # python backend r22-r23 refuse less ("can't be smaller than 4 MiBs")

# env name -> (the deploy option that sets it, its default, the least value Triton accepts)
SETTINGS: dict[str, tuple[str, int, int]] = {
    SHM_DEFAULT_ENV: ("--shm-default-bytes", DEFAULT_SHM_BYTES, MIN_SHM_BYTES),
    SHM_GROWTH_ENV: ("--shm-growth-bytes", DEFAULT_SHM_GROWTH_BYTES, 1),
    LOG_VERBOSE_ENV: ("--triton-log-verbose", DEFAULT_LOG_VERBOSE, 0),
}


def _whole(text: str) -> int | None:
    """``"0"``, ``"16777216"``; ``true``/``false`` as 1/0 (tritonserver reads ``--log-verbose``
    that way); None for anything else."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return int(lowered == "true")
    return int(lowered) if lowered.isdigit() else None


def _setting(env_name: str, option_value: int | None, env: Mapping[str, str]) -> str:
    """One setting's value: the ``--env`` one (as written), else the option's, else the default;
    refused (naming the option or variable) below Triton's minimum or when the two disagree."""
    option, default, least = SETTINGS[env_name]
    given = env.get(env_name)
    if given is None:
        value = default if option_value is None else option_value
        if value < least:
            raise InvalidInput(f"{option} {value}: Triton refuses less than {least}")
        return str(value)
    from_env = _whole(given)
    if from_env is None or from_env < least:
        raise InvalidInput(f"--env {env_name}={given}: expected a whole number of at least {least}")
    if option_value is not None and option_value != from_env:
        raise InvalidInput(f"{option} {option_value} and --env {env_name}={given} disagree: "
                           f"give one of them")
    return given


def triton_environment(env: Mapping[str, str], *, shm_default_bytes: int | None = None,
                       shm_growth_bytes: int | None = None,
                       log_verbose: int | None = None) -> dict[str, str]:
    """The container Environment: the caller's ``env`` plus the Triton settings above, each
    from its option (None: its default) or from ``env``."""
    options = {SHM_DEFAULT_ENV: shm_default_bytes, SHM_GROWTH_ENV: shm_growth_bytes,
               LOG_VERBOSE_ENV: log_verbose}
    out = dict(env)
    for name, value in options.items():
        out[name] = _setting(name, value, env)
    return out
