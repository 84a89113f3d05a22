"""Project configuration (lakeforge.yml) and discovery of pipelines and SQL models."""
