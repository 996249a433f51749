"""dbqueue's Alembic environment, installed as the ``dbqueue.migrations`` package."""
