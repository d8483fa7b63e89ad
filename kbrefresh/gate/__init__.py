"""Gate room: judge a candidate version against live before any user sees it.

``golden`` (golden query files), ``metrics`` (pure retrieval metrics), ``evaluation``
(run golden queries on candidate and live), ``policy`` (acceptance rules),
``verdict`` (apply the rules), ``smoke`` (sanity checks of a built version).
"""
