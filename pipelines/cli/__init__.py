"""The `lineage-guard` command line: `run`, `validate`, `demo` and the `lineage` audit group."""
