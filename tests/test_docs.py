"""Every relative link in README.md and docs/ points to a file that exists, and every
#anchor to a heading of that file (GitHub's anchor rules)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{path.relative_to(root)}: {target} (no such file)")
        elif fragment and linked.suffix == ".md" and fragment not in anchors_of(linked):
            broken.append(f"{path.relative_to(root)}: {target} (no such heading)")
    return broken


def test_anchor_follows_github_rules():
    assert anchor(" The teacher view cache (`--teacher_cache views`)") == "the-teacher-view-cache---teacher_cache-views"
    assert anchor("Export and INT8") == "export-and-int8"


def test_every_relative_link_resolves(tmp_path):
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 5
    broken = [line for page in pages for line in broken_links(page)]
    assert not broken, "\n".join(broken)
    # The check itself finds a broken link and a broken anchor.
    bad = tmp_path / "bad.md"
    bad.write_text("# Title\n[a](missing.md) [b](#nowhere) [c](#title)\n", encoding="utf-8")
    assert [line.split(": ")[1] for line in broken_links(bad, tmp_path)] == ["missing.md (no such file)",
                                                                          "#nowhere (no such heading)"]


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
