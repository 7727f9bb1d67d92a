"""Example projects using tenant_schemas_celery."""
