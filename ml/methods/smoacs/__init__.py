"""SMOACS: gradient-based crystal design through differentiable property predictors, with
oxidation-number masks that keep charge neutrality exact (methods.md §3)."""
