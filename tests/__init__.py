"""The test suite as a package, so pytest and mypy both name its modules ``tests.*``."""
