"""Running one stage: parameters, papermill execution, scraps."""
