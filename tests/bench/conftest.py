"""tests/bench holds scripts run by hand (``python3 tests/bench/bench.py``), not tests."""

collect_ignore_glob = ["*.py"]
