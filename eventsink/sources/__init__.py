"""Built-in pull data sources, registered through the ``eventsink_register_sources`` hook."""
