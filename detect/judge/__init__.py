"""Judging a report: the metric catalogue, security profiles, evaluation, fleet statistics, ML."""
