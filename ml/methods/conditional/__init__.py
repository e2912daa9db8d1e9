"""Conditional generation (docs/methods.md §2): a flow-matching generator of lattice and
fractional coordinates conditioned on composition, space group and property targets.

Modules: ``geometry`` (canonical cell, lattice state, priors), ``model`` (atom-set transformer),
``flow`` (loss, condition dropout, guided sampler), ``data`` (MP-20 arrays), ``train`` (CLI),
``checkpoint``, ``sampler`` (conditions -> crystals), ``composition`` (proposal), ``method``.
"""
