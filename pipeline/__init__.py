"""The semtok pipeline on Ray Data: tokenize and audit jobs, operations, and their building blocks.

Subpackages: `io` (reading inputs), `dataset` (the output), `tokenize`, `audit`, `ops` (verify,
status, estimate), `runtime` (Ray, signals, telemetry). See docs/architecture.md.
"""
