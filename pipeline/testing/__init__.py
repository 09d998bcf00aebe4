"""Test material made by the project itself: tiny checkpoints, a fake model, example audio."""
