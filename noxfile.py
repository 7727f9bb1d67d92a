"""Version matrix: ``nox`` runs the test suite against each supported combination.

    nox                        # every session
    nox -s "tests(newest)"     # one combination
    nox -l                     # list them
    nox -s "tests(oldest)" -- tests/test_worker.py -x   # arguments after -- go to pytest

Each session needs the services the tests use (see README, "Running the tests").
"""

from __future__ import annotations

import nox

nox.options.reuse_existing_virtualenvs = True

#: name -> (python, pins): the oldest and the newest supported of each dependency.
MATRIX = {
    "oldest": (  # kombu: the oldest that Celery 5.4.0 accepts
        "3.9",
        ["celery[redis]==5.4.0", "kombu==5.3.4", "Django==4.2.*", "django-tenants==3.6.0",
         "django-celery-beat==2.6.0", "sentry-sdk==2.0.0"],
    ),
    "django42-newest-celery": (
        "3.12",
        ["celery[redis]<6", "Django==4.2.*", "django-tenants<4", "django-celery-beat"],
    ),
    "django52": (
        "3.13",
        ["celery[redis]<6", "Django==5.2.*", "django-tenants>=4,<5", "django-celery-beat"],
    ),
    "newest": (  # django-celery-beat 2.9 accepts Django < 6.1
        "3.13",
        ["celery[redis]<6", "Django==6.0.*", "django-tenants>=4,<5",
         "django-celery-beat==2.9.*"],
    ),
    "django60-py312": (
        "3.12",
        ["celery[redis]<6", "Django==6.0.*", "django-tenants>=4,<5",
         "django-celery-beat==2.9.*"],
    ),
}  # fmt: skip

#: name -> (python, pins): combinations without the "beat" extra (its tests not collected).
WITHOUT_BEAT = {
    "django61": ("3.13", ["celery[redis]<6", "Django==6.1.*", "django-tenants>=4,<5"]),
}  # fmt: skip


@nox.session
@nox.parametrize(("python", "pins"), [MATRIX[name] for name in MATRIX], ids=list(MATRIX))
def tests(session: nox.Session, pins: list[str]) -> None:
    """Run the test suite with one combination of Python, Celery, Django and django-tenants."""
    session.install("-e", ".[test]", *pins)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
@nox.parametrize(
    ("python", "pins"), [WITHOUT_BEAT[name] for name in WITHOUT_BEAT], ids=list(WITHOUT_BEAT)
)
def tests_without_beat(session: nox.Session, pins: list[str]) -> None:
    """Run the test suite without django-celery-beat (a Django it does not support yet)."""
    session.install("-e", ".[test-core]", *pins)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python="3.13")
def psycopg3(session: nox.Session) -> None:
    """Run the test suite with psycopg 3 as Django's driver (it is preferred to psycopg2
    when both are installed) and its pool: tests/test_psycopg3.py runs real workers with
    ``OPTIONS["pool"]`` on the prefork and threads pools."""
    session.install("-e", ".[test]", "psycopg[binary,pool]>=3.1.8", "Django>=5.1,<6")
    session.run("python", "-m", "pytest", *session.posargs)
