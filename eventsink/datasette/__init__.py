"""The Datasette bridge: the plugin (``plugin``) and its status pages (``status``)."""
