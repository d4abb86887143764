"""The idiomatic SQLAlchemy 2 enqueue the bench compares `delivery::enqueue` with.

One session per event, as a request handler would: read the agent, add the delivery, commit.
Prints events per second over N events and the pid of its PostgreSQL backend, then waits for a
line on stdin (so the bench can read that backend's CPU) before it closes the connection. Usage: sqlalchemy_enqueue.py DATABASE_URL AGENT_ID N
"""

import datetime
import sys
import time
import uuid

from sqlalchemy import Boolean, DateTime, Integer, LargeBinary, String, Text, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class Agent(Base):
    __tablename__ = "agents"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    organization_id: Mapped[str] = mapped_column(String)
    is_deleted: Mapped[bool] = mapped_column(Boolean)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_enabled: Mapped[bool] = mapped_column(Boolean)


class Delivery(Base):
    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    organization_id: Mapped[str] = mapped_column(String)
    agent_id: Mapped[str] = mapped_column(String)
    event_id: Mapped[str] = mapped_column(String)
    event_type: Mapped[str] = mapped_column(String)
    webhook_url: Mapped[str] = mapped_column(Text)
    attempt_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))
    next_retry_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)


def main() -> None:
    url, agent_id, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    engine = create_engine(url.replace("postgres://", "postgresql+psycopg2://", 1), pool_size=1)
    payload = b'{"n":1}'
    start = time.perf_counter()
    for i in range(n):
        with Session(engine) as session:
            agent = session.get(Agent, agent_id)
            if agent is None or agent.is_deleted or not agent.webhook_enabled or not agent.webhook_url:
                raise SystemExit(f"agent {agent_id} cannot receive events")
            now = datetime.datetime.now(datetime.timezone.utc)
            session.add(
                Delivery(
                    id=f"dlv-{uuid.uuid4()}",
                    organization_id=agent.organization_id,
                    agent_id=agent.id,
                    event_id=f"sqla-{i}",
                    event_type="run.completed",
                    webhook_url=agent.webhook_url,
                    attempt_count=0,
                    created_at=now,
                    next_retry_at=now,
                    payload=payload,
                )
            )
            session.commit()
    rate = n / (time.perf_counter() - start)
    # The backend's CPU is read by the bench while this connection is still open.
    with engine.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        print(rate, pid, flush=True)
        sys.stdin.readline()


if __name__ == "__main__":
    main()
