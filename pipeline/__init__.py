"""Batch audio annotation with Qwen2-Audio: manifest -> plan -> decode -> features -> model -> parse -> sink."""
