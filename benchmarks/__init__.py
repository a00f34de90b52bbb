"""The project's benchmarks, run from the project root as modules (``python -m benchmarks.run``)."""
