"""Alembic environment: the shop's own engine and metadata."""

from alembic import context

from shop.extensions import db

app = context.config.attributes["flask_app"]

# Importing the models fills the metadata that autogenerate compares against.
import shop.models  # noqa: E402,F401

with app.app_context():
    engine = db.engine
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=db.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
