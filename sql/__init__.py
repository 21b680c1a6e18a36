"""The schema and named queries of dreamcatcher_pg, shipped inside the wheel."""
