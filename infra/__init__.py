"""Infrastructure adapters, one package per real system: `aws`, `store`, `triton`, `endpoint` (the local
multi-model endpoint), `records` (persisted documents), `processes` (what we own); plus the error
tree, `$MME_HOME` paths and the once-only flow error line."""
