"""The ``make demo`` project: django-tenants + tenant_schemas_celery, three tenants, a worker
and beat. ``examples/demo/run.py`` runs it end to end; see its docstring.
"""
