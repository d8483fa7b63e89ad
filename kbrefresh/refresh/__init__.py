"""Refresh room: the one refresh sequence (``sequence``) over its steps (``steps``), run by the
CLI with plain calls and by the Prefect flow with each step as a task.
"""
