"""The web side: one ASGI stack (FastAPI on uvicorn) shared by the auditors' console
(`lineage-guard serve`) and the ingestion gateway (`lineage-guard gateway`).

Layout (each a file a newcomer finds by name):

- ``auth.py``: who is asking. Local users (argon2 password hashes) and API keys kept in the
  lineage store, OIDC bearer tokens checked against the issuer's JWKS; each becomes one
  ``Principal`` (name, role, tenants, scopes).
- ``access.py``: what each role and scope may do, the one table every route is checked against.
- ``app.py``: what both servers share: the application factory, ``/healthz``, ``/metrics``,
  errors as one line (never a traceback), security headers.
- ``console.py``: the console's pages and its ``/api/v1``; ``gateway.py``: ``/v1/records:check``
  and ``/v1/records:admit``.
"""
