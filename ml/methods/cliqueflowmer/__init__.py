"""CliqueFlowmer: latent-space model-based optimisation of crystals (docs/methods.md §1)."""
