"""Outputs: evaluation (metrics, thresholds, decisions), figures and reports, and rebuilding the
reports from artifacts alone."""
