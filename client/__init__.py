"""The client process (``python -m client``) and its Python API (``client.api``)."""
