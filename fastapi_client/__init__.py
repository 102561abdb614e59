"""FastAPI/Starlette middleware asking gerrit-authz for each request."""
