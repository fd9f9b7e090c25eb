"""The app layer: the click commands and the one place that composes stages (evaluate, the report
after scoring, explaining a .keras model, robustness)."""
