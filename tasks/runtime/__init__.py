"""What every task needs from Prefect: retry rules, the run context, the task runner."""
