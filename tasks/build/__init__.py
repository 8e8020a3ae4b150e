"""One ensemble's build: render, package, verify (in Triton), the footprint measured in Triton,
the build's reports and lineage."""
