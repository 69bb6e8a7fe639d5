from nyxnb.store import models


def test_open_creates_schema(store):
    assert {"tenants", "workflow_steps", "step_items", "llm_calls"} <= set(store.table_names())
    with store.session() as s:
        s.add(models.Tenant(slug="x", name="X"))
