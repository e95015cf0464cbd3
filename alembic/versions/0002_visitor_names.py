"""visitor names: a comparison key and when a name was chosen

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

`name_key` is the NFKC, case-folded form two visible names must not share; existing rows get
it computed here in Python (PostgreSQL has no case folding that matches `str.casefold`).
"""

import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000


def _name_key(name: str) -> str:
    # A copy of app.services.visitors.name_key as of this revision: a migration must not change
    # when the app's code does.
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return " ".join(folded.split())


def upgrade() -> None:
    # "" for rows written outside the app (matches no name); existing rows get their key below.
    op.add_column("visitors", sa.Column("name_key", sa.Text(), server_default="", nullable=False))
    op.add_column("visitors", sa.Column("renamed_at", sa.DateTime(timezone=True), nullable=True))
    visitors = sa.table(
        "visitors", sa.column("id", sa.Uuid()), sa.column("name"), sa.column("name_key")
    )
    bind = op.get_bind()
    after = None
    while True:  # in batches, by id
        query = sa.select(visitors.c.id, visitors.c.name).order_by(visitors.c.id).limit(BATCH)
        if after is not None:
            query = query.where(visitors.c.id > after)
        rows = bind.execute(query).all()
        if not rows:
            break
        bind.execute(
            visitors.update()
            .where(visitors.c.id == sa.bindparam("vid"))
            .values(name_key=sa.bindparam("key")),
            [{"vid": r.id, "key": _name_key(r.name)} for r in rows],
        )
        after = rows[-1].id
    op.create_index(op.f("ix_visitors_name_key"), "visitors", ["name_key"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_visitors_name_key"), table_name="visitors")
    op.drop_column("visitors", "renamed_at")
    op.drop_column("visitors", "name_key")
