"""Dataset specifications, the dataset graph and selection."""
