"""The paper registry (constructions.registry.register_paper): every declared result names
registered claims, every registered claim belongs to a paper, and docs/claims.md shows each
paper's coverage."""
import pytest

from constructions import ConstructionError, registry
from verify.docs import claims_markdown


def test_every_result_names_registered_claims_and_every_claim_has_a_paper():
    ids = {c.id for c in registry.claims()}
    listed = {i for p in registry.papers() for r in p.results for i in r.claims}
    assert listed <= ids, sorted(listed - ids)
    assert ids <= listed, sorted(ids - listed)


def test_the_claims_page_shows_each_papers_coverage():
    text = claims_markdown()
    for p in registry.papers():
        done = sum(1 for r in p.results if r.claims)
        assert f"## {p.key}" in text and f"{done} of {len(p.results)} results registered" in text
    assert "not yet" in text and "## Resources" in text


def test_register_paper_refuses_bad_declarations():
    with pytest.raises(ConstructionError, match="declared already"):
        registry.register_paper(registry.Paper("von Oswald et al. 2023", "again"))
    with pytest.raises(ConstructionError, match="Result"):
        registry.register_paper(registry.Paper("Nobody 2099", "x", ("not a result",)))
    with pytest.raises(ConstructionError, match="Paper"):
        registry.register_paper("von Oswald")
