"""Docs match the code: the config reference is generated from the models, and
every option has a description (STYLE.md §8)."""

from pathlib import Path

from greenmine import docgen

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_is_current():
    committed = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert committed == docgen.render(), (
        "docs/config-reference.md is stale: run 'python -m greenmine.docgen > docs/config-reference.md'"
    )


def test_every_option_is_described():
    from agent.config import AgentConfig
    from agent.registermap import Profile
    from server.config import ServerConfig
    from simulators.config import SimSiteConfig

    missing = []
    for root in (AgentConfig, ServerConfig, SimSiteConfig, Profile):
        for model in docgen._models(root):
            for name, f in model.model_fields.items():
                if not f.description:
                    missing.append(f"{model.__name__}.{name}")
    assert not missing, f"options without Field(description=...): {missing}"
