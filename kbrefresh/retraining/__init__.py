"""Retraining room: signals measured from Postgres, drift statistics, the trigger decision
tree, and the check that turns signals into a recorded decision.
"""
