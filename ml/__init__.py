"""Scientific core of matdesign: crystals, data, oracles, evaluation and design methods.

Nothing in here knows about HTTP, databases or queues.
"""

__version__ = "0.1.0"
