import inspect

import pytest

import constructions
from verify.claims import CLAIMS


def test_names_build_and_attribute_agree():
    assert constructions.names() == [
        "binary_test", "gd", "gd_plus_plus", "lasso_ista", "logistic_gd", "preconditioned_gd", "raw_gd", "relu_gd", "ridge_newton",
        "ridge_select", "ridge_sherman_morrison",
    ]
    for name in constructions.names():
        assert callable(getattr(constructions, name))
    c = constructions.build("gd", d=3, steps=2, lr=0.1)
    assert c.name == "gd" and c.params == dict(d=3, steps=2, lr=0.1, lam=0.0)


@pytest.mark.parametrize(
    "c, layers, heads, width",
    [
        (constructions.gd(4, 5, 0.1), 5, 1, 5),
        (constructions.gd(4, 5, 0.1, lam=0.2), 5, 2, 7),
        (constructions.gd_plus_plus(4, 3, 0.1, 0.05), 3, 1, 5),
        (constructions.preconditioned_gd(4, 2, [[1, 2, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), 2, 1, 5),
    ],
)
def test_resources_match_the_docstrings(c, layers, heads, width):
    r = c.resources
    assert (r["layers"], r["heads"], r["width"]) == (layers, heads, width)
    assert r["params"] == sum(p.numel() for p in c.model.parameters())
    assert c.layout.width == width


@pytest.mark.parametrize("name", constructions.names())
def test_every_construction_states_theorem_source_resources_exactness(name):
    doc = inspect.getdoc(getattr(constructions, name))
    for word in ("Theorem", "Resources", "Exactness", "Domain"):
        assert f"**{word}" in doc, f"{name} docstring lacks **{word}**"
    assert "claims.md sec." in doc and " 20" in doc  # a section reference and a year


@pytest.mark.parametrize("name", constructions.names())
def test_every_construction_has_a_claim_and_a_docs_page(name):
    assert any(c.construction.split("(")[0].strip() == name for c in CLAIMS.values())
    from pathlib import Path

    page = Path(__file__).parent.parent / "docs" / "constructions" / f"{name}.md"
    assert page.exists(), f"missing {page}"
    assert "icl-verify check" in page.read_text()


def test_to_float32_keeps_the_original():
    c = constructions.gd(2, 1, 0.1)
    c32 = c.to("float32")
    assert c32.dtype.is_floating_point and str(c32.dtype) == "torch.float32"
    assert str(c.dtype) == "torch.float64"
