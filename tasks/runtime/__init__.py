"""What every task needs from Prefect and from the terminal: retry rules, the run context, the
task runner, how hashes and sizes are written."""
