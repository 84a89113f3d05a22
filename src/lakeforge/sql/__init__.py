"""SQL models: header parsing, dependency extraction, rendering for the engine."""
