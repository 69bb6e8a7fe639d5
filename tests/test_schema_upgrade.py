"""An older store is upgraded in place on open, keeping its rows; a newer one is refused."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

import nyxnb
from nyxnb.store.schema import HEAD, alembic_config, current_revision


def test_store_at_0001_is_upgraded_in_place_with_its_rows(store_url):
    engine = create_engine(store_url.replace("postgresql://", "postgresql+psycopg://"))
    command.upgrade(alembic_config(engine), "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tenants (id, slug, name, created_at, updated_at) "
                "VALUES ('t1', 'old', 'Old', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    assert current_revision(engine) == "0001"
    engine.dispose()

    store = nyxnb.open_store(store_url)
    assert current_revision(store.engine) == HEAD
    indexes = {i["name"] for i in inspect(store.engine).get_indexes("step_items")}
    assert "ix_step_items_step_id_status" in indexes
    assert store.find_tenant("old").name == "Old"
    store.dispose()


def test_newer_store_is_refused(store_url):
    nyxnb.open_store(store_url).dispose()
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(nyxnb.StoreVersionError, match="newer") as info:
        nyxnb.open_store(store_url)
    assert "upgrade nyxnb" in str(info.value)
