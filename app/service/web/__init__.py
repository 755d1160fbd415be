"""The web side: the two FastAPI apps (API and UI) with their error handlers, the API's routes,
the listen addresses, and `serve` (two uvicorn servers in one process)."""
