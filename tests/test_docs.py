"""The documentation site builds without a warning, and its pages tell the truth.

`mkdocs build --strict` (run once, in a subprocess) fails on any warning: a broken link or
anchor, a page missing from the nav, a docstring griffe cannot parse. On top of that the
tests check that the API reference is generated from the docstrings, that every page of
docs/ is in the nav, and that docs/cli.md (written by hand) documents every command of
`sar2ndvi` and every option of each command, and nothing that no longer exists.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from sar2ndvi.cli import main
from tests.support import REPO

DOCS = REPO / "docs"
CONFIG = REPO / "mkdocs.yml"
#: Seconds the build may take before the test gives up (it takes ~10 s on two cores).
BUILD_TIMEOUT = 300


def _nav_pages(nav: object) -> list[str]:
    """Every page path in a mkdocs nav (strings, {title: path} and nested sections)."""
    if isinstance(nav, str):
        return [] if re.match(r"^[a-z]+://", nav) else [nav]
    if isinstance(nav, list):
        return [page for entry in nav for page in _nav_pages(entry)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    raise AssertionError(f"unexpected nav entry {nav!r} in {CONFIG}")


def _load_config() -> dict:
    # mkdocs.yml holds no Python tags, so the safe loader reads all of it
    return yaml.safe_load(CONFIG.read_text(encoding="utf-8"))


def _cli_sections() -> dict[str, str]:
    """docs/cli.md cut at its "## `command`" headings: command name -> section text."""
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    parts = re.split(r"^## `([a-z0-9-]+)`\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _long_options(command: click.Command) -> set[str]:
    """The --long flags of a command's options (not its arguments, not --help); a group's
    are those of its subcommands."""
    if isinstance(command, click.Group):
        return set().union(*(_long_options(c) for c in command.commands.values()))
    return {
        opt
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden
        for opt in (*param.opts, *param.secondary_opts)
        if opt.startswith("--")
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built once with `mkdocs build --strict`; fails with mkdocs' own output."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's banner, not a warning
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, log
    return out


@pytest.mark.slow
def test_the_site_builds_strict_with_the_api_reference_and_every_command(site: Path) -> None:
    api = (site / "api" / "features" / "index.html").read_text(encoding="utf-8")
    # mkdocstrings renders one anchored heading per documented object
    assert 'id="sar2ndvi.features.write_features"' in api
    assert 'id="sar2ndvi.localstats.local_mean_std"' in api
    # and the docstring's own words, so the reference is generated, not an empty heading
    assert "normalisation" in api
    catalog = (site / "api" / "catalog" / "index.html").read_text(encoding="utf-8")
    assert 'id="sar2ndvi.catalog.select_scenes"' in catalog
    assert 'id="sar2ndvi.recipe.load_recipe"' in catalog
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    missing = [name for name in main.commands if f'id="{name}"' not in cli]
    assert not missing, f"commands without a section in the built CLI page: {missing}"
    for page in _nav_pages(_load_config()["nav"]):
        # directory URLs: cli.md -> cli/index.html, api/index.md -> api/index.html
        folder = re.sub(r"(^|/)index$", "", page.removesuffix(".md"))
        assert (site / folder / "index.html").is_file(), f"{page} was not built"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    nav = _nav_pages(_load_config()["nav"])
    assert len(nav) == len(set(nav)), f"pages listed twice in the nav: {nav}"
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    orphans = sorted(on_disk - set(nav))
    assert not orphans, (
        f"pages in docs/ that the nav does not list (add them to mkdocs.yml): {orphans}"
    )
    dangling = sorted(set(nav) - on_disk)
    assert not dangling, f"nav entries with no file in docs/: {dangling}"


def test_the_api_reference_covers_every_module_of_the_package() -> None:
    documented = {
        m.group(1)
        for page in (DOCS / "api").glob("*.md")
        for m in re.finditer(r"^::: (sar2ndvi[\w.]*)\s*$", page.read_text(encoding="utf-8"), re.M)
    }
    package = REPO / "sar2ndvi"
    # the command-line modules are documented on the CLI page, not in the API reference
    wanted = {
        "sar2ndvi." + p.stem
        for p in package.glob("*.py")
        if p.stem != "__init__" and not p.stem.startswith("cli")
    }
    assert "sar2ndvi.features" in wanted  # the glob found the package
    absent = sorted(wanted - documented)
    assert not absent, f"modules missing from docs/api/*.md: {absent}"
    for module in documented:  # every block names a module that exists
        path = package.joinpath(*module.split(".")[1:])
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), module


def test_the_cli_page_documents_every_command_and_option_and_nothing_else() -> None:
    sections = _cli_sections()
    assert set(main.commands) <= set(sections), (
        f"commands without a '## `name`' section in docs/cli.md: "
        f"{sorted(set(main.commands) - set(sections))}"
    )
    stale = sorted(set(sections) - set(main.commands))
    assert not stale, f"docs/cli.md documents commands that do not exist: {stale}"
    for name, command in main.commands.items():
        text = sections[name]
        # an option is documented by its row in the section's table: | `--flag ...` |
        rows = set(re.findall(r"^\| `(--[a-z0-9-]+)", text, flags=re.MULTILINE))
        options = _long_options(command)
        assert options, name  # every command has options; the helper found them
        assert options <= rows, f"{name}: options missing from docs/cli.md: {options - rows}"
        assert rows <= options, f"{name}: docs/cli.md lists options it lacks: {rows - options}"
