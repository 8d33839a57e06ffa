"""Repository-level conftest: puts the repository root on sys.path (for ``fixtures``)."""
