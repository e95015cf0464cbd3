"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "counters",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("value", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_counters")),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.String(length=120), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "window_start", name=op.f("pk_rate_buckets")),
    )
    op.create_table(
        "visitors",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_visitors")),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("instance_id", sa.String(length=80), nullable=False),
        sa.Column("listener_connected", sa.Boolean(), nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "heartbeat_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index(op.f("ix_workers_instance_id"), "workers", ["instance_id"], unique=False)
    op.create_table(
        "activity",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("author_id", sa.Uuid(), nullable=False),
        sa.Column("author_name", sa.String(length=40), nullable=False),
        sa.Column("body", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("hidden_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "kind IN ('message', 'joined', 'renamed')", name=op.f("ck_activity_kind")
        ),
        sa.CheckConstraint("char_length(body) <= 280", name=op.f("ck_activity_body_length")),
        sa.ForeignKeyConstraint(
            ["author_id"],
            ["visitors.id"],
            name=op.f("fk_activity_author_id_visitors"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_activity")),
    )
    op.create_index(op.f("ix_activity_author_id"), "activity", ["author_id"], unique=False)
    op.create_index("ix_activity_created_at", "activity", ["created_at"], unique=False)
    op.create_table(
        "presence",
        sa.Column("worker_id", sa.String(length=80), nullable=False),
        sa.Column("visitor_id", sa.Uuid(), nullable=False),
        sa.Column(
            "since", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["visitor_id"],
            ["visitors.id"],
            name=op.f("fk_presence_visitor_id_visitors"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["worker_id"],
            ["workers.id"],
            name=op.f("fk_presence_worker_id_workers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("worker_id", "visitor_id", name=op.f("pk_presence")),
    )
    op.create_index(op.f("ix_presence_visitor_id"), "presence", ["visitor_id"], unique=False)
    # The one counter the app shows.
    op.execute("INSERT INTO counters (id, value) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_index(op.f("ix_presence_visitor_id"), table_name="presence")
    op.drop_table("presence")
    op.drop_index("ix_activity_created_at", table_name="activity")
    op.drop_index(op.f("ix_activity_author_id"), table_name="activity")
    op.drop_table("activity")
    op.drop_index(op.f("ix_workers_instance_id"), table_name="workers")
    op.drop_table("workers")
    op.drop_table("visitors")
    op.drop_table("rate_buckets")
    op.drop_table("counters")
