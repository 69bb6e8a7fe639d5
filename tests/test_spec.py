"""Bad specs: every error names the field (and line, for YAML) and says the fix."""

from __future__ import annotations

import pytest

from nyxnb import SpecError, load_spec
from nyxnb.store.seed import load_spec_path

GOOD = """\
name: demo
steps:
  - name: analysis
    persona: Athena
    prompt: "Analyse {{ project.name }}"
  - name: features
    type: fan-out
    items:
      - {heading: Auth, body: login}
    prompt: "Design {{ item.heading }} after {{ steps.analysis.output }}"
  - name: synthesis
    type: synthesis
    prompt: "{% for i in steps.features.items %}{{ i.heading }}: {{ i.output }}{% endfor %}"
generate:
  implementation_prompts: {from: features, persona: Aristaeus}
"""


def test_sample_spec_is_valid():
    spec = load_spec(load_spec_path())
    assert spec.name == "brbase-plan"
    fan = spec.step("features")
    assert fan.type == "fan-out" and len(fan.items or []) == 13
    assert spec.generate.implementation_prompts and spec.generate.consistency_check


def test_good_spec_loads_from_yaml_text_and_dict():
    spec = load_spec(GOOD)
    assert [s.name for s in spec.steps] == ["analysis", "features", "synthesis"]
    assert load_spec(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("old", "new", "field", "line", "says"),
    [
        ("type: fan-out", "type: fanout", "steps[1].type", 7, "fan-out"),
        (
            "    persona: Athena\n",
            "    persona: Athena\n    temprature: 1\n",
            "steps[0].temprature",
            5,
            "spelling",
        ),
        ("{{ item.heading }} after", "{{ itme.heading }} after", "steps[1].prompt", 10, "itme"),
        ("steps.analysis.output", "steps.synthesis.output", "steps[1].prompt", 10, "earlier"),
        ("- name: synthesis", "- name: analysis", "steps[2].name", 11, "unique"),
        (
            "{from: features",
            "{from: analysis",
            "generate.implementation_prompts.from",
            None,
            "fan-out",
        ),
        ("      - {heading: Auth, body: login}\n", "", "steps[1]", 6, "items"),
        ("{% endfor %}", "", "steps[2].prompt", 13, "syntax"),
        ("name: demo", "name: ''", "name", 1, "at least 1"),
    ],
)
def test_bad_spec_names_field_and_line(old, new, field, line, says):
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    with pytest.raises(SpecError) as info:
        load_spec(text)
    err = info.value
    assert err.field == field, str(err)
    if line is not None:
        assert err.line == line, str(err)
    assert says.lower() in str(err).lower()


def test_invalid_yaml_reports_line():
    with pytest.raises(SpecError) as info:
        load_spec("name: x\nsteps: [\n  - oops: {\n")
    assert info.value.line is not None


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")


def test_pattern_check_needs_repository():
    bad = {"name": "x", "steps": [{"name": "c", "type": "pattern-check"}]}
    with pytest.raises(SpecError, match="repository"):
        load_spec(bad)
