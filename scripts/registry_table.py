"""Rewrite the registry table in docs/guide/choosing.md from repsim.list_measures()."""

import re
from pathlib import Path

from repsim.measures.registry import registry_markdown

PAGE = Path(__file__).resolve().parent.parent / "docs" / "guide" / "choosing.md"
START, END = "<!-- registry-table:start -->", "<!-- registry-table:end -->"


def render(text: str) -> str:
    return re.sub(f"{START}.*?{END}", lambda _: f"{START}\n{registry_markdown()}{END}", text, flags=re.S)


if __name__ == "__main__":
    PAGE.write_text(render(PAGE.read_text()))
    print(f"wrote {PAGE}")
