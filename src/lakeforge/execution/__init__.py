"""Planning (what is stale and why) and executing runs."""
