"""Command-line tools: dataset synthesis, training, export, evaluation, benchmarks."""
