"""The body every benchmark task runs: one ORM query on a tenant model."""

from __future__ import annotations

from tests.project.notes.models import Note


def query_note() -> int:
    """Run one ``SELECT`` on ``notes_note`` in the active schema; return the rows found."""
    return len(Note.objects.filter(pk=1))
