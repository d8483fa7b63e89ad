"""Release room: what happens after the gate: progressive delivery (canary, A/B), the
post-deploy monitor, automatic rollback, archives and notifications.

``traffic`` reads what users saw of one version in one time window from the query log and
feedback; rollouts and the monitor judge versions on it.
"""
