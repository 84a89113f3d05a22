"""Delta Lake storage: pinned reads, write strategies, commit metadata, maintenance."""
