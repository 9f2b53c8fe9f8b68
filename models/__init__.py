"""Model definitions written against ``Ops``, weight loading (safetensors only), data."""
