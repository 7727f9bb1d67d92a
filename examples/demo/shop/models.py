"""The tenant app: its tables exist in every tenant schema, not in public."""

from django.db import models


class Order(models.Model):
    name = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.name


class PeriodicRun(models.Model):
    """One run of the periodic task, written in the schema it ran in."""

    beat_round = models.FloatField(help_text="time.time() at which beat sent the round")
    schema_seen = models.CharField(max_length=63, help_text="connection.schema_name in the task")
    ran_at = models.DateTimeField(auto_now_add=True)
