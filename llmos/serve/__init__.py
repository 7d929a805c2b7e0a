"""The HTTP server (app.py, protocol.py) and its chat page (static/); `llmos serve` starts it (server.py)."""
