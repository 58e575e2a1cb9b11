"""The repository stands on its own: its math document exists, everything points at it, nothing
points outside the repository, and the tests it names exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATH = ROOT / "docs" / "math.md"
PRODUCT_DIRS = ("src", "tests", "verification", "benchmarks", "examples", "configs", "docs")
SKIP_DIRS = {"__pycache__", "build", "dist", "node_modules"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".json", ".cfg", ".txt", ".csv", ""}
# Built from parts so that this file does not match itself.
OUTSIDE = ("/".join(("shared", "docs")), "/".join(("..", "shared")))


def _product_files() -> list[Path]:
    """Text files a user of the repository gets (installed or generated artefacts skipped)."""
    files = [p for p in ROOT.iterdir() if p.is_file() and p.suffix in TEXT_SUFFIXES]
    for top in PRODUCT_DIRS:
        for path in (ROOT / top).rglob("*"):
            parts = path.relative_to(ROOT).parts
            if any(
                part in SKIP_DIRS or part.startswith(".") or part.endswith(".egg-info")
                for part in parts
            ):
                continue
            if path.is_file() and path.suffix in TEXT_SUFFIXES:
                files.append(path)
    return files


def test_math_document_exists_and_is_linked() -> None:
    assert MATH.is_file(), "docs/math.md is missing"
    text = MATH.read_text(encoding="utf-8")
    for must in ("2602.06107", "2311.00460", "Fact 6", "proposal", "accepted", "κ"):
        assert must in text, must
    assert "docs/math.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/math.md" in (ROOT / "verification" / "__init__.py").read_text(encoding="utf-8")
    obrs = ROOT / "src" / "jackpot" / "functional" / "obrs.py"
    assert "docs/math.md" in obrs.read_text(encoding="utf-8")


def test_nothing_points_outside_the_repository() -> None:
    files = _product_files()
    assert len(files) > 50  # the walk really saw the repository
    offenders = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{path.relative_to(ROOT)}: {n}" for n in OUTSIDE if n in text]
    assert not offenders, offenders


def test_every_test_named_in_the_math_document_exists() -> None:
    """Section 3 says which test proves which fact; a renamed test must update it."""
    text = MATH.read_text(encoding="utf-8")
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", text)) - {"test_regression_"}
    modules = set(re.findall(r"`(?:verification/)?(test_[a-z0-9_]+\.py)`", text))
    assert len(named) >= 20 and modules
    names_in_modules = {m.removesuffix(".py") for m in modules}
    sources = {p.stem: p.read_text(encoding="utf-8") for p in (ROOT / "verification").glob("*.py")}
    for module in names_in_modules:
        assert module in sources, f"docs/math.md names verification/{module}.py, which is gone"
    defined = set(re.findall(r"^def (test_[a-z0-9_]+)", "\n".join(sources.values()), re.M))
    missing = sorted((named - names_in_modules) - defined)
    assert not missing, f"docs/math.md names tests that do not exist: {missing}"
    facts = sorted(p.stem for p in (ROOT / "verification").glob("test_fact*.py"))
    assert facts and all(f"{f}.py" in text for f in facts), "a fact module is not documented"


def test_documented_eval_split_of_a_local_file(tmp_path: Path) -> None:
    """docs/extending.md, "Data": the eval split is the last ``min(num_eval, max(N // 5, 1))``
    records in file order, the rest is the training set; numeric answers become strings."""
    from types import SimpleNamespace

    from jackpot.fit import _task_examples

    lines = [f'{{"problem": "q{i}", "answer": {i}}}' for i in range(30)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    for num_eval, n_eval in ((64, 6), (4, 4), (6, 6)):
        task = SimpleNamespace(
            name="jsonl",
            path=tmp_path / "d.jsonl",
            prompt_field="problem",
            answer_field="answer",
            num_eval=num_eval,
        )
        train, evals = _task_examples(SimpleNamespace(task=task))
        assert [e.prompt for e in evals] == [f"q{i}" for i in range(30 - n_eval, 30)]
        assert [e.answer for e in train] == [str(i) for i in range(30 - n_eval)]


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (code blocks skipped)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    heads = re.findall(r"^#+\s+(.+?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_front_page_is_short_and_its_links_resolve() -> None:
    """The README is a front page (at most 250 lines) whose detail lives in docs/; every
    relative link of the README and of docs/*.md names a file that exists, and an anchor
    names a heading of that file."""
    readme = ROOT / "README.md"
    assert len(readme.read_text(encoding="utf-8").splitlines()) <= 250
    docs = sorted((ROOT / "docs").glob("*.md"))
    for name in ("usage", "losses", "extending", "engines", "scaling", "metrics", "benchmarks"):
        assert f"docs/{name}.md" in readme.read_text(encoding="utf-8"), name
    broken = []
    for page in (readme, *docs):
        text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            target, _, anchor = link.partition("#")
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {link}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such heading)")
    assert not broken, broken
