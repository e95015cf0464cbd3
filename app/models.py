"""The schema as SQLAlchemy 2 models; only Alembic migrations build it (no create_all)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    Uuid,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MESSAGE_MAX = 280
ACTIVITY_ID_MAX = 2**63 - 1  # activity ids are PostgreSQL bigints
NAME_MAX = 40
IDEMPOTENCY_KEY_MAX = 64


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Counter(Base):
    """A named counter; the app uses the row with id 1, created by the first migration."""

    __tablename__ = "counters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")


class Visitor(Base):
    """A browser identity, recorded at its first write, or at its first stream within its
    address's allowance (never by GET /)."""

    __tablename__ = "visitors"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), nullable=False)
    # NFKC, case-folded: what two visible names must not share (app.services.visitors.name_key).
    # A row written outside the app (a script, a benchmark) gets "", which matches no name.
    name_key: Mapped[str] = mapped_column(Text, nullable=False, server_default="", index=True)
    # When the visitor last chose a name: it stays reserved for a day.
    renamed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class Activity(Base):
    """One feed item. Ids are taken under a lock held to commit, so they follow commit order."""

    __tablename__ = "activity"
    __table_args__ = (
        # 'joined' is no longer written (watching writes no feed item); old rows stay valid.
        CheckConstraint("kind IN ('message', 'joined', 'renamed')", name="kind"),
        CheckConstraint(f"char_length(body) <= {MESSAGE_MAX}", name="body_length"),
        Index("ix_activity_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    author_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("visitors.id", ondelete="CASCADE"), nullable=False, index=True
    )
    author_name: Mapped[str] = mapped_column(String(NAME_MAX), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    hidden_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Worker(Base):
    """A live worker process: its heartbeat expires its presence entries if it dies."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(80), nullable=False, index=True)
    listener_connected: Mapped[bool] = mapped_column(Boolean, nullable=False)
    started_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    heartbeat_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class PresenceEntry(Base):
    """Visitor V has at least one open stream on worker W (or left less than the grace ago)."""

    __tablename__ = "presence"

    worker_id: Mapped[str] = mapped_column(
        String(80), ForeignKey("workers.id", ondelete="CASCADE"), primary_key=True
    )
    visitor_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("visitors.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    since: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class RateBucket(Base):
    """Requests counted per key per minute window, shared by every worker and instance."""

    __tablename__ = "rate_buckets"

    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    hits: Mapped[int] = mapped_column(Integer, nullable=False)


class IdempotencyKey(Base):
    """The committed answer to a write sent with an `Idempotency-Key`, written in the write's
    own transaction: it exists if and only if the write committed. Expired after 24 hours."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)

    # No foreign key: an increment does not record its visitor.
    visitor_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    key: Mapped[str] = mapped_column(String(IDEMPOTENCY_KEY_MAX), primary_key=True)
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    status: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    content_type: Mapped[str] = mapped_column(String(100), nullable=False)
    body: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
