"""The world suite: traffic worlds, reference policies and a runner (python -m bench.worlds)."""
