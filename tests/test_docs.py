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


def test_readme_eval_split_of_a_local_file(tmp_path: Path) -> None:
    """README, "Data": the eval split is the last ``min(num_eval, max(N // 5, 1))`` records in
    file order, the rest is the training set; numeric answers become strings."""
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
