"""The HTML report: reads the files the stages wrote (never a model) and versions each run."""
