"""Reporting: metrics, the evaluate stage's report, the recipe diff, the offline plots page."""
