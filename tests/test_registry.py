"""The one registry: every construction declared once, with its claims, and users' constructions
registered the same way."""
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import constructions
from constructions import ConstructionError, registry
from queries import small_case
from verify.claims import Claim, check_claim
from verify.reference import GD

ROOT = Path(__file__).parent.parent
BUILT_IN = [e.name for e in registry.entries() if e.module.startswith("constructions.")]


def test_names_build_and_attributes_agree():
    assert constructions.names() == sorted(e.name for e in registry.entries())
    for name in constructions.names():
        assert getattr(constructions, name) is registry.entry(name).factory
        assert name in dir(constructions)
    c = constructions.build("gd", d=3, steps=2, lr=0.1)
    assert c.name == "gd" and c.params == dict(d=3, steps=2, lr=0.1, lam=0.0)
    with pytest.raises(AttributeError):
        constructions.no_such_construction


@pytest.mark.parametrize(
    "c, layers, heads, width",
    [
        (constructions.gd(4, 5, 0.1), 5, 1, 5),
        (constructions.gd(4, 5, 0.1, lam=0.2), 5, 2, 7),
        (constructions.gd_plus_plus(4, 3, 0.1, 0.05), 3, 1, 5),
        (constructions.preconditioned_gd(4, 2, [[1, 2, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), 2, 1, 5),
        (constructions.heavy_ball(4, 3, 0.1, 0.5), 3, 2, 7),
    ],
)
def test_resources_match_the_docstrings(c, layers, heads, width):
    r = c.resources
    assert (r["layers"], r["heads"], r["width"]) == (layers, heads, width)
    assert r["params"] == sum(p.numel() for p in c.model.parameters())
    assert c.layout.width == width


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_construction_states_theorem_source_resources_exactness(name):
    doc = inspect.getdoc(getattr(constructions, name))
    for word in ("Theorem", "Resources", "Exactness", "Domain"):
        assert f"**{word}" in doc, f"{name} docstring lacks **{word}**"
    assert re.search(r"et al\. 20\d\d|Polyak 1964|Nadaraya 1964", doc)  # a paper and its year


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_construction_has_claims_a_bench_row_and_a_docs_page(name):
    e = registry.entry(name)
    assert e.claims and all(c.construction is e.factory for c in e.claims)
    assert e.bench is not None and e.summary and e.source and e.exactness
    page = ROOT / "docs" / "constructions" / f"{name}.md"
    assert page.exists(), f"missing {page}"
    assert "icl-verify check" in page.read_text()


@pytest.mark.parametrize("claim_id", [c.id for c in registry.claims()])
def test_every_claim_names_its_algorithm_and_its_case_returns_it(claim_id):
    """A claim's reference algorithm is an object (a class), and its case builds an instance of it."""
    claim = registry.claim(claim_id)
    if claim.kind == "bound":
        return
    assert isinstance(claim.algorithm, type)
    c, ref, *_ = small_case(claim)
    assert isinstance(ref, claim.algorithm) and c.name == claim.name


def test_to_float32_keeps_the_original():
    c = constructions.gd(2, 1, 0.1)
    c32 = c.to("float32")
    assert c32.dtype.is_floating_point and str(c32.dtype) == "torch.float32"
    assert str(c.dtype) == "torch.float64"


# -- a user's construction ---------------------------------------------------------------------------
def scaled_gd(d: int, steps: int, lr: float):
    """GD written by a user: the toolkit's gd construction under another name."""
    c = constructions.gd(d, steps, lr)
    return constructions.Construction("scaled_gd", dict(d=d, steps=steps, lr=lr), c.blocks, c.layout, d, domain=c.domain)


def _case(p, k):
    lr = 0.5 / float(np.linalg.eigvalsh(np.einsum("bni,bnj->bij", p.X, p.X) / p.spec.n)[:, -1].max())
    return scaled_gd(p.spec.d, k.steps, lr), GD(k.steps, lr=lr)


@pytest.fixture
def user_construction():
    claim = Claim("user-scaled-gd", "a user", "their notes", "GD again", "GD iterates (numpy)", _case, GD)
    registry.register(scaled_gd, summary="GD", source="a user", exactness="exact", claims=[claim])
    yield claim
    registry.unregister("scaled_gd")


def test_a_users_construction_is_seen_everywhere(user_construction, tmp_path):
    assert "scaled_gd" in constructions.names() and constructions.scaled_gd is scaled_gd
    assert registry.claim("user-scaled-gd").construction is scaled_gd
    assert check_claim(registry.claim("user-scaled-gd"), prompts=3).holds
    c = constructions.build("scaled_gd", d=2, steps=2, lr=0.1)
    loaded = constructions.load(c.save(tmp_path / "mine.safetensors"))
    assert loaded.name == "scaled_gd" and loaded.params == c.params


def test_after_unregistering_the_file_names_the_module_to_import(user_construction, tmp_path):
    path = constructions.build("scaled_gd", d=2, steps=1, lr=0.1).save(tmp_path / "mine.safetensors")
    registry.unregister("scaled_gd")
    try:
        with pytest.raises(ConstructionError, match=r"not registered here; import the module .*test_registry"):
            constructions.load(path)
    finally:
        registry.register(scaled_gd, summary="GD", source="a user", exactness="exact", claims=[user_construction])


def test_bad_registrations_are_refused(user_construction):
    with pytest.raises(ConstructionError, match="registered already"):
        registry.register(scaled_gd, summary="", source="", exactness="")
    with pytest.raises(ConstructionError, match="name of the constructions package"):
        registry.register(_named("parts"), summary="", source="", exactness="")
    with pytest.raises(ConstructionError, match="name of the constructions package"):
        registry.register(_named("numpy_pass"), summary="", source="", exactness="")  # a submodule not yet imported
    with pytest.raises(ConstructionError, match="registered already"):
        registry.add_claim(user_construction)
    with pytest.raises(ConstructionError, match="not a registered construction"):
        registry.add_claim(Claim("user-orphan", "a", "b", "c", "d", _case, GD, construction=lambda: None))
    with pytest.raises(ConstructionError, match="claim id"):
        registry.add_claim(Claim("Bad Id", "a", "b", "c", "d", _case, GD))
    registry.register(_named("misnamed", lambda: constructions.gd(2, 1, 0.1)), summary="", source="", exactness="")
    try:
        with pytest.raises(ConstructionError, match="returned a construction named"):
            constructions.build("misnamed")
    finally:
        registry.unregister("misnamed")


def _named(name, fn=None):
    fn = fn or (lambda: None)
    fn.__name__ = name
    return fn


def test_unknown_names_say_how_to_make_them_known():
    with pytest.raises(ConstructionError, match="--import"):
        constructions.build("nope")
    with pytest.raises(ConstructionError, match="--import"):
        registry.claims(["no-such-claim"])
