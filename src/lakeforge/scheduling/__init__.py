"""Scheduling: when runs happen, and what is watched once they have.

- ``spec.py`` — configuration models: freshness SLAs, alert channels, schedules and
  sensors (read with every project load, so nothing heavy is imported there).
- ``schedules.py`` — cron schedules (croniter): due ticks, catchup.
- ``sensors.py`` — file, upstream-change and Python sensors; ``@lf.sensor``.
- ``scheduler.py`` — ``Scheduler.tick``: evaluates schedules and sensors and queues runs,
  its state in ``lf_schedule_state`` (``lakeforge schedule``).
- ``queue.py`` / ``worker.py`` — the run queue and the workers that execute it.
- ``freshness.py``, ``alerts.py``, ``alert_book.py``, ``channels.py`` — freshness SLAs
  and alert delivery.

Importing this package is cheap: evaluation and delivery modules are imported only when
they are used.
"""
