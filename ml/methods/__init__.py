"""Design methods, each behind :class:`ml.methods.base.DesignMethod`."""
