"""Evaluation: likelihood (NLL, bits per note), n-gram baselines, musical metrics, and
the paired song bootstrap that puts intervals on differences."""
