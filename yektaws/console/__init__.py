"""The operator console: a live page of the whole cluster, on the server API's listener.

- :mod:`~yektaws.console.samples`: every process samples its own figures every two seconds and
  keeps fifteen minutes of them (connections, users, event rates, rejects, AI streams, loop lag,
  session store and broker health, recoveries).
- :mod:`~yektaws.console.views`: the questions each node answers over the bus (``stats``, one
  page of ``connections``, one page of ``users``) and how the answers add up to the cluster.
- :mod:`~yektaws.console.auth`: the login cookie (signed with a key derived from
  ``ADMIN_API_KEY``) and the per-address limit on wrong keys.
- :mod:`~yektaws.console.routes`: the sub-application at ``/console/``: pages, login, JSON.
- ``static/``: the page itself, plain HTML, JavaScript and CSS with no build step and nothing
  fetched from elsewhere; it pulls ``/console/api/stats`` every two seconds and draws its own
  SVG charts.
"""
