"""Benchmarks: speed and memory figures, printed and saved, never asserted in tests."""
