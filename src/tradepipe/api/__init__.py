"""The API gateway (R8.2): read endpoints over the projections, commands as events, API keys,
rate limits and the OpenAPI spec; :func:`tradepipe.api.app.create_app` builds it and
:mod:`tradepipe.api.server` runs it as the ``tradepipe api`` process."""
