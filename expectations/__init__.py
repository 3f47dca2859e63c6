"""Package data: shipped in the wheel as `lineage_guard_data.expectations`."""
