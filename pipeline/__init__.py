"""Ray Data stages of a tokenize job, and the output side (writers, commit, manifest)."""
