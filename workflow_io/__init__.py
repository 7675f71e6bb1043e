"""Workflow files: UI <-> API conversion, loading and overrides, the shipped workflows."""
