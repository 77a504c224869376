"""korepl's speed benchmark, and the model fixtures the tests share with it (benchmarks/README.md maps the modules)."""
