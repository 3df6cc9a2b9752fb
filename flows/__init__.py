"""Prefect flows that compose the stages, and the ``sslpipe`` command line."""
