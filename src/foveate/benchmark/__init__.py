"""The benchmark behind ``foveate bench``: suites of cases, the runner, the report."""
