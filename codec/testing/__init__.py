"""Test-support code shipped with the package (deterministic golden weights)."""
