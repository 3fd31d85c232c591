"""The one thing pyproject.toml cannot say: ship the top-level ``alembic/`` folder inside the
wheel as ``ledger/_migrations`` (``ledger.db.migrate`` finds it there in an installed copy and
at ``<checkout>/alembic`` in a checkout). Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["ledger", "ledger.*"]),
        "ledger._migrations",
        "ledger._migrations.versions",
    ],
    package_dir={"ledger._migrations": "alembic"},
)
