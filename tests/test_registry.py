"""One registry type for every named, configurable piece, and `mollm list` printing them all."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mollm.cli import app
from mollm.core.registry import Options, Registry, describe_options, options_from_signature


class _Opts(Options):
    rate: float = 0.5
    name: str


def test_registry_checks_options_without_building_and_lists_every_problem():
    reg: Registry[object] = Registry("widget")
    reg.add("w", object, _Opts, "a widget")
    assert reg.names() == ["w"] and "w" in reg
    assert reg.check("w", {"name": "x"}) == []
    (problem,) = reg.check("w", {"rate": "fast", "nmae": "x"})
    assert problem.startswith("widget 'w': ")
    assert "option 'name': required" in problem
    assert "option 'rate': Input should be a valid number" in problem
    assert "option 'nmae': unknown option (its options: rate, name)" in problem
    with pytest.raises(ValueError, match=r"unknown widget 'v'; known: w"):
        reg.entry("v")
    with pytest.raises(ValueError, match="already registered"):
        reg.add("w", dict, _Opts)
    assert reg.check("w", ["not", "a", "mapping"])[0].endswith("options must be a mapping of names to values, got ['not', 'a', 'mapping']")


def test_options_from_a_signature_are_typed():
    def metric(ctx, data, *, k: float = 0.4, judge: str = "keyword", holdout: str | None = None):
        """A metric."""

    opts = options_from_signature(metric, skip=2, name="m")
    assert [row[0] for row in describe_options(opts)] == ["k", "judge", "holdout"]
    assert opts(k="0.5").k == 0.5
    with pytest.raises(ValueError):
        opts(k="many")


def test_mollm_list_prints_every_registry():
    got = CliRunner().invoke(app, ["list", "--json"])
    assert got.exit_code == 0, got.output
    table = json.loads(got.output)
    assert set(table) == {"objectives", "aggregators", "metrics", "data", "judges"}
    names = {kind: {e["name"] for e in entries} for kind, entries in table.items()}
    assert {"uce", "npo", "kl", "nll"} <= names["objectives"]
    assert {"ds_mgda", "mgda", "linear", "upgrad"} <= names["aggregators"]
    assert {"harmful_rate", "forget_quality", "mia"} <= names["metrics"]
    assert {"tofu", "pku", "truthfulqa", "facts", "hf", "file"} == names["data"]
    assert {"keyword", "embedding", "classifier"} == names["judges"]
    uce = next(e for e in table["objectives"] if e["name"] == "uce")
    assert uce["options"] == [{"name": "eps", "type": "float", "default": "0.5"}]
    text = CliRunner().invoke(app, ["list", "aggregators"])
    assert text.exit_code == 0 and "ds_mgda" in text.output and "preference: list[float] | None = None" in text.output
    bad = CliRunner().invoke(app, ["list", "losses"])
    assert bad.exit_code == 2 and "unknown kind 'losses'" in bad.output
