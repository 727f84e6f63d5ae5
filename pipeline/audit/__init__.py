"""The quality audit job: sampling, decode stage, quality metrics, token statistics, report and diff."""
