"""The ``mme`` command line: build, deploy, retire, the local endpoint, and the demo.

One module per command group (:mod:`.build`, :mod:`.fleet`, :mod:`.deploy`, :mod:`.invoke`,
:mod:`.endpoint`, :mod:`.demo`), the shared error reporting in :mod:`.common`. Importing them
here registers their commands on ``app``, in the order ``mme --help`` lists them; the console
script is ``flows.cli:main``.
"""

from __future__ import annotations

import sys

# the order of these imports is the order of the commands in `mme --help`
from flows.cli import (build, fleet, fleet_deploy, fleet_retire, fleet_verify, deploy,  # noqa: F401
                       preflight, rollback, invoke, endpoint, demo, plan,  # (importing registers
                       verbosity)  # the commands)
from flows.cli.common import (_exit_code, _fail, _print_deploy, _print_table, _quiet_env, _report,
                              _run_flow, app, console, endpoint_app)
from flows.cli.deploy_options import DeployOptions, _backend_options, _parse_env, _sagemaker_options

__all__ = ["DeployOptions", "_backend_options", "_exit_code", "_fail", "_parse_env", "_print_deploy",
           "_print_table", "_quiet_env", "_report", "_run_flow", "_sagemaker_options", "app", "console",
           "endpoint_app", "main"]


def main() -> None:
    """The ``mme`` entry point. A project error that escapes a command outside a flow (``mme
    endpoint start`` on a taken port) is one line with the tree's exit code too."""
    from infra.processes.ownership import sweep_dead_owners

    if "--dry-run" not in sys.argv[1:]:  # a dry run signals and removes nothing, leftovers included
        sweep_dead_owners()  # processes, shm and scratch a killed earlier run left (proven ours)
    try:
        app()
    except Exception as e:
        code = _report(e)
        if code is None:
            raise
        sys.exit(code)
