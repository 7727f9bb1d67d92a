"""The demo's tasks. None of them names a tenant: each runs in the schema it was sent from."""

from django.db import connection

from examples.demo.celery import app

from .models import Order, PeriodicRun


@app.task
def list_orders():
    """Return the schema the task ran in and the orders it can see."""
    names = list(Order.objects.order_by("id").values_list("name", flat=True))
    return {"schema": connection.schema_name, "orders": names}


@app.task
def add_order(trail, name):
    """Create an order; return ``trail`` plus this step's schema (for chains and chords)."""
    Order.objects.create(name=name)
    return [*trail, connection.schema_name]


@app.task
def count_orders(trail):
    """Last step of a chain: the schemas of every step, and the orders now visible."""
    return {"trail": [*trail, connection.schema_name], "count": Order.objects.count()}


@app.task
def summarize(header_trails):
    """Chord callback: the schemas the header tasks ran in, and its own."""
    header = [schema for trail in header_trails for schema in trail]
    return {"header": header, "callback": connection.schema_name, "count": Order.objects.count()}


@app.task
def record_periodic_run(beat_round):
    """The periodic task: beat sends it to every tenant; it leaves a row in its schema."""
    PeriodicRun.objects.create(beat_round=beat_round, schema_seen=connection.schema_name)
    return connection.schema_name
