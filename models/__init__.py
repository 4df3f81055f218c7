"""Features, online anomaly detectors and model specs: pure code, no I/O, shared by the live flow and the
replay tool. Empty until the anomaly-model work (issue 4) lands; threshold rules live in `flows/rules.py`."""
