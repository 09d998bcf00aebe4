"""Intake: manifests in, audio decoded and checked, long audio cut, Whisper features out."""
