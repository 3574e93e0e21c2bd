"""Chat backends: one module per provider, all speaking :class:`base.ChatBackend`."""
