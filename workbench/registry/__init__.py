"""MLflow: the embedded default store, connection helpers for notebooks, model lookups."""
