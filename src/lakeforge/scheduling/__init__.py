"""Scheduling: freshness SLAs and alerts (schedules and sensors are to come).

Importing this package is cheap: the configuration models (``spec.py``) are read when a
project loads; evaluation and delivery modules are imported only when they are used.
"""
