#!/usr/bin/env python3
"""A host platform made the way a SQLAlchemy 2 application makes it, for the test that the
host's `alembic revision --autogenerate` leaves agent-webhooks' objects alone
(tests/tests/it/host_autogenerate.rs).

    alembic_host_fixture.py setup DIR URL [--empty]
        Writes an Alembic environment into DIR, autogenerates the platform's first revision from
        its declarative models (organizations, agents, runs -> agents), upgrades URL to it and
        inserts a few rows.
        With --empty, no rows: a fresh install of the platform.
    alembic_host_fixture.py platform-writes URL
        Creates the platform's default organization, an agent and a run through its ORM, as
        the platform does on a fresh install (fails when its tables were replaced by ours).
    alembic_host_fixture.py autogenerate DIR URL [SNIPPET_FILE [--host-change]]
        Runs `revision --autogenerate` against URL, with the `include_object` snippet pasted
        into env.py when SNIPPET_FILE is given, and prints the operations it proposes as JSON
        (one object per operation) instead of writing a revision file. --host-change first adds
        a column `plan` to the platform's `agents` model, as a developer would.

URL is a SQLAlchemy URL (sqlite:////abs/path.db, postgresql+psycopg2://...). Exit status 3 when
SQLAlchemy or Alembic is missing.
"""

import json
import os
import sys
from datetime import datetime
from typing import Optional

try:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import (Boolean, Column, DateTime, ForeignKey, Index, String, Text, create_engine,
                            false, func)
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"missing Python package: {e}", file=sys.stderr)
    sys.exit(3)


class Base(DeclarativeBase):
    pass


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    updated_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    is_deleted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Agent(Base):
    __tablename__ = "agents"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[Optional[str]] = mapped_column(String(255))
    description: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=func.now())
    updated_at: Mapped[Optional[datetime]] = mapped_column(DateTime, onupdate=func.now())
    is_deleted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    model: Mapped[Optional[str]] = mapped_column(String(64))


class Run(Base):
    """One of the platform's tables that reference `agents`."""

    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"))
    status: Mapped[str] = mapped_column(String(32))
    __table_args__ = (Index("ix_runs_agent_id_status", "agent_id", "status"),)


ENV_PY = '''
from alembic import context

config = context.config
include_object = None
snippet = config.attributes.get("snippet")
if snippet:
    # What a developer pastes into env.py.
    exec(snippet)

connectable = config.attributes["engine"]
with connectable.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=config.attributes["metadata"],
        include_object=include_object,
        process_revision_directives=config.attributes.get("directives_hook"),
    )
    with context.begin_transaction():
        context.run_migrations()
'''


def config(directory, url, **attributes):
    cfg = Config(os.path.join(directory, "alembic.ini"))
    cfg.set_main_option("script_location", os.path.join(directory, "alembic"))
    cfg.attributes["engine"] = create_engine(url)
    cfg.attributes["metadata"] = Base.metadata
    cfg.attributes.update(attributes)
    return cfg


def setup(directory, url, empty=None):
    cfg = config(directory, url)
    command.init(cfg, os.path.join(directory, "alembic"), template="generic")
    with open(os.path.join(directory, "alembic", "env.py"), "w") as f:
        f.write(ENV_PY)
    command.revision(cfg, message="platform", autogenerate=True)
    command.upgrade(cfg, "head")
    if empty == "--empty":
        return  # a fresh install of the platform: tables, no rows yet
    with Session(cfg.attributes["engine"]) as session:
        # Flushed parent first: the models declare no relationships to order the inserts by.
        session.add(Organization(id="org-1", name="Acme", created_at=datetime.now()))
        session.flush()
        session.add_all(
            [Agent(id=f"agent-{i}", organization_id="org-1", name=f"agent {i}") for i in range(3)]
        )
        session.flush()
        session.add_all([Run(id=f"run-{i}", agent_id=f"agent-{i}", status="done") for i in range(3)])
        session.commit()


def describe(op):
    """The proposed operation as a flat record; grouped operations are flattened."""
    if hasattr(op, "ops"):
        for sub in op.ops:
            yield from describe(sub)
        return
    record = {"op": type(op).__name__, "table": getattr(op, "table_name", None)}
    for attr in ("column_name", "index_name", "constraint_name"):
        value = getattr(op, attr, None)
        if value:
            record["name"] = value
    column = getattr(op, "column", None)  # AddColumnOp carries the Column itself
    if column is not None:
        record["name"] = column.name
    yield record


def autogenerate(directory, url, snippet_file=None, host_change=None):
    proposed = []
    if host_change == "--host-change":
        Agent.__table__.append_column(Column("plan", String(32)))
    elif host_change is not None:
        raise SystemExit(f"unknown option {host_change}")

    def capture(context, revision, directives):
        for script in directives:
            for upgrade in script.upgrade_ops_list:
                proposed.extend(describe(upgrade))
        directives[:] = []  # nothing is written

    snippet = None
    if snippet_file:
        with open(snippet_file) as f:
            snippet = f.read()
    cfg = config(directory, url, snippet=snippet, directives_hook=capture)
    command.revision(cfg, message="check", autogenerate=True)
    print(json.dumps(proposed))


def platform_writes(url):
    """What the platform does on a fresh install: its default organization and an agent with
    the platform's own columns, through its ORM. Fails when its tables were replaced."""
    engine = create_engine(url)
    with Session(engine) as session:
        session.add(Organization(id="org-default", name="Default", created_at=datetime.now()))
        session.flush()
        session.add(Agent(id="agent-default", organization_id="org-default", model="gpt"))
        session.flush()
        session.add(Run(id="run-default", agent_id="agent-default", status="new"))
        session.commit()
    print("ok")


def main(argv):
    if len(argv) in (3, 4) and argv[0] == "setup":
        setup(*argv[1:])
    elif len(argv) == 2 and argv[0] == "platform-writes":
        platform_writes(argv[1])
    elif len(argv) in (3, 4, 5) and argv[0] == "autogenerate":
        autogenerate(*argv[1:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
