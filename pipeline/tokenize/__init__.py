"""The tokenize job: work plan, prepare and encode stages, assembly into units, the driver loop, retries."""
