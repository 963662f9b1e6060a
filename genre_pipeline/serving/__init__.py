"""Serving the registered champion: an HTTP API and a web page (``genre-pipeline serve``)."""
