"""The server process (``python -m server``) and the dealer (``python -m server.dealer``)."""
