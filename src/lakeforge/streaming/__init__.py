"""Streaming: streaming tables built micro-batch by micro-batch (``loop.py``), from a
source or from the rows appended to an upstream dataset (``sources/delta_feed.py``)."""
