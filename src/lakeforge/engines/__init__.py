"""Transform engines behind one protocol (``base.py``)."""
