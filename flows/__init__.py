"""Prefect flows for NEAT: they orchestrate the `neat` stage entry points, nothing more."""
