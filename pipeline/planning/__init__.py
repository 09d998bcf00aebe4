"""Planning: what a run of these manifests on this OUT has to do, before any model work."""
