"""Package data: shipped in the wheel as `lineage_guard.schemas.crm`."""
