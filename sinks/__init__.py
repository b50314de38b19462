"""The built-in sinks, each a plugin registered through the ``eventsink`` entry-point group."""
