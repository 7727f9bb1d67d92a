"""Benchmarks of tenant_schemas_celery (see bench/README.md)."""
