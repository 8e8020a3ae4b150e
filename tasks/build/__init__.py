"""One ensemble's build: render, package, verify (in Triton), the step cache, reports and lineage."""
