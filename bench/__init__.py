"""nyxnb benchmarks: `python -m bench` prints ratios and writes bench/results/latest.json."""
