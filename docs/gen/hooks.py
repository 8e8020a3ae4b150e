"""MkDocs hooks: the generated reference and benchmark pages, and the repository's own links.

Why hooks (not files in ``docs/``): the reference is rendered from the code and the benchmark
pages from ``bench/results`` each time the site is built, so nothing generated is committed
and nothing can go stale. The existing pages are also read on GitHub, where their links to
``../README.md`` and to ``bench/results/*.png`` are written for the repository; the hooks make
those resolve in the site too (README -> the home page; the charts copied in under the same
path), so the pages need no second spelling.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_bench  # noqa: E402
import gen_cli  # noqa: E402
import gen_env  # noqa: E402
import gen_errors  # noqa: E402
import gen_schema  # noqa: E402
from mkdocs.structure.files import File, Files  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
README_LINK = re.compile(r"\]\((\.\./)+README\.md\)")


def generated_pages() -> dict[str, str]:
    """Site path -> Markdown of every generated page."""
    pages = {"reference/cli.md": gen_cli.render(),
             "reference/ensemble-file.md": gen_schema.ensemble_page(),
             "reference/fleet-file.md": gen_schema.fleet_page(),
             "reference/errors.md": gen_errors.render(),
             "reference/environment.md": gen_env.render()}
    bench = gen_bench.pages()
    pages["benchmarks/index.md"] = gen_bench.index(bench)
    pages.update({f"benchmarks/{p.slug}.md": p.markdown for p in bench})
    return pages


def on_files(files: Files, config: Any) -> Files:
    """Add the generated pages, and the bench charts under ``bench/results/`` (where the
    existing pages link them)."""
    for uri, text in generated_pages().items():
        files.append(File.generated(config, uri, content=text))
    for png in sorted((ROOT / "bench" / "results").glob("*.png")):
        files.append(File.generated(config, f"bench/results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """A link to the repository's README is a link to the site's home page."""
    depth = page.file.src_uri.count("/")
    return README_LINK.sub(f"]({'../' * depth}index.md)", markdown)
