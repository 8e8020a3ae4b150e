"""The capacity and cost planner (issue 12): which instance type, how many, how many endpoints,
cache on or off, and what autoscaling target, for a fleet, its traffic and a latency goal.

Pure functions (catalog, traffic, footprints, simulate, plan, charts); the Prefect tasks that
wrap them are in :mod:`tasks.planning.tasks`, the flow in ``flows/plan.py``, the CLI in
``flows/cli/plan.py``.
"""
