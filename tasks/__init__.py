"""Pipeline stages: one module per stage, each a plain function plus a thin Prefect task.

A stage function takes paths and its config section, does its own I/O and calls
``ssl_models`` for the science. Prefect, DVC and the CLI all call the same functions.
"""
