"""The REST API (``/api/v1/``): the portals' operations for programs, on the same services and access helpers."""
