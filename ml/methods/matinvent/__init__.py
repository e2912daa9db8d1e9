"""MatInvent (issue 16): RL fine-tuning of a template policy feeding the Wyckoff flow."""
