"""Crystal-GFN: a GFlowNet over space group -> composition -> lattice, realised as crystals.

Modules: :mod:`.spacegroups` (crystal-lattice systems, point symmetries, Wyckoff counts),
:mod:`.chemistry` (charge neutrality and element tables), :mod:`.proxy` and
:mod:`.proxy_data` (the formation-energy / band-gap proxy and its MP-20 features),
:mod:`.env` (the batched environment), :mod:`.policy`, :mod:`.reward`, :mod:`.gfn`
(trajectory balance, replay, sampling), :mod:`.realise` (Wyckoff generator with the sampled
lattice), :mod:`.method` (the ``crystal_gfn`` design method).
"""
