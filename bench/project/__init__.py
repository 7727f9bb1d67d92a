"""Django project and Celery apps used by the benchmarks (never by the test suite)."""
