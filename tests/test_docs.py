"""Docs match the code: the config reference is generated from the models, and
every option has a description."""

from pathlib import Path

from greenmine import docgen

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_is_current():
    committed = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert committed == docgen.render(), (
        "docs/config-reference.md is stale: run 'python -m greenmine.docgen > docs/config-reference.md'"
    )


def test_every_option_is_described():
    from greenmine.agent.config import AgentConfig
    from greenmine.agent.registermap import Profile
    from greenmine.server.config import ServerConfig
    from greenmine.server.uplink.energy.config import PlatformProfile
    from greenmine.simulators.config import SimSiteConfig

    missing = []
    for root in (AgentConfig, ServerConfig, SimSiteConfig, Profile, PlatformProfile):
        for model in docgen._models(root):
            for name, f in model.model_fields.items():
                if not f.description:
                    missing.append(f"{model.__name__}.{name}")
    assert not missing, f"options without Field(description=...): {missing}"


def test_readme_hj212_snippet_is_a_valid_server_config(tmp_path):
    import re

    from greenmine.checkcmd import load_any

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"```toml\n(\[\[hj212\]\].*?)```", text, re.S)
    assert m, "README lost its HJ 212 configuration example"
    cfg = tmp_path / "server.toml"
    cfg.write_text('kind = "server"\n[[sites]]\nid = "gs-jinchang-cu01"\n' + m.group(1), encoding="utf-8")
    kind, model = load_any(cfg)
    assert kind == "server" and model.hj212[0].devices == ["dust-north", "noise-east"]


#: Files a user of the repo does not have: the team's design notes beside the checkout, or this machine's paths.
_OUTSIDE = ("DOMAIN" + ".md", "DESIGN" + ".md", "STYLE" + ".md", "../" + "shared", "/work" + "/")


def test_nothing_points_outside_the_repo():
    from subprocess import run

    files = run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    bad = []
    for name in files:
        path = ROOT / name
        if path.suffix not in {".md", ".py", ".toml", ".sh", ".j2", ".txt"} or not path.is_file():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            bad += [f"{name}:{n}: {word}" for word in _OUTSIDE if word in line]
    assert not bad, "\n".join(bad)
