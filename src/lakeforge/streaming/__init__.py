"""Streaming: streaming tables built micro-batch by micro-batch (``loop.py``), from a
source or from the rows appended to an upstream dataset (``sources/delta_feed.py``); event
time on them — watermarks (``watermark.py``), windows (``windows.py``), late data and dedup
(``operator.py``), the state kept between micro-batches (``state.py``), their configuration
(``spec.py``)."""
