"""Sphinx extension for the book: tables generated at build time from what the code measured.

Directives (each replaced by a table once every notebook of the build has been executed, so the order in which
notebooks run does not matter):

* ``labkit-claims`` -- the claims of the source documents (:data:`labkit.claims.CLAIMS`), the value the book
  measured (a chapter's glued value, from myst-nb's ``<notebook>.glue.json``, or a benchmark entry of
  ``benchmarks/results/*.json``), the device and the chapter;
* ``labkit-exercises`` -- every exercise of the chapters in the book, with its check and learning goal
  (:func:`labkit.classroom.exercise_index`);
* ``labkit-notebook-times`` -- how long each chapter took to execute in each profile
  (``benchmarks/notebook_times.json``, written by the root ``conftest.py`` for nbmake runs and by this extension
  for the book build).

Enable it with ``sphinx: extra_extensions: [labkit.bookext]`` in ``_config.yml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

from labkit import claims as claims_module
from labkit import classroom

LOGGER = logging.getLogger(__name__)
PROFILES = ("smoke", "cpu", "gpu")


class labkit_pending(nodes.General, nodes.Element):
    """Placeholder for a generated table, filled in by :class:`FillTables`."""


class _TableDirective(SphinxDirective):
    kind = ""
    has_content = False

    def run(self):
        self.env.labkit_dynamic_docs = getattr(self.env, "labkit_dynamic_docs", set()) | {self.env.docname}
        node = labkit_pending(kind=self.kind)
        node.source, node.line = self.get_source_info()
        return [node]


class ClaimsDirective(_TableDirective):
    kind = "claims"


class ExercisesDirective(_TableDirective):
    kind = "exercises"


class NotebookTimesDirective(_TableDirective):
    kind = "times"


def _table(header: list[str], rows: list[list[Any]], widths: list[int]) -> nodes.table:
    table = nodes.table(classes=["labkit-generated"])
    group = nodes.tgroup(cols=len(header))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    body = nodes.tbody()
    group += body
    for target, cells in [(head, header), *[(body, row) for row in rows]]:
        row_node = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            for part in cell if isinstance(cell, list) else [cell]:  # a list: one paragraph per item
                if isinstance(part, nodes.Node):
                    entry += nodes.paragraph("", "", part)
                else:
                    entry += nodes.paragraph(text=str(part))
            row_node += entry
        target += row_node
    return table


def _doc_link(docname: str, refdoc: str) -> nodes.Node:
    """A link to chapter ``docname`` showing its title (resolved by Sphinx's reference resolver)."""
    ref = pending_xref("", refdomain="std", reftype="doc", reftarget="/" + docname, refexplicit=False,
                       refwarn=True, refdoc=refdoc)
    ref += nodes.inline(docname, docname)
    return ref


class FillTables(SphinxPostTransform):
    """Replace each placeholder with its table; runs before the reference resolver (priority 10)."""

    default_priority = 5

    def apply(self, **kwargs):
        for node in list(self.document.findall(labkit_pending)):
            try:
                replacement = getattr(self, f"_{node['kind']}")(node)
            except Exception as err:  # a failure here must fail a -W build with its reason, not hide the table
                LOGGER.warning(f"labkit-{node['kind']}: {type(err).__name__}: {err}", location=node)
                replacement = [nodes.paragraph(text=f"(table unavailable: {err})")]
            node.replace_self(replacement)

    def _root(self) -> Path:
        return Path(self.env.srcdir)

    def _claims(self, node):
        glue_dir = Path(self.env.mystnb_config.output_folder) / "notebooks"
        rows = claims_module.claim_rows(glue_dir, self._root() / "benchmarks" / "results", claims_module.CLAIMS)
        body, previous = [], None
        for row in rows:
            if row.problem:
                LOGGER.warning(f"labkit-claims: {row.problem}", location=node)
            first = (row.claim, row.source) != previous
            previous = (row.claim, row.source)
            claim = [row.claim, nodes.emphasis(row.source, row.source),
                     _doc_link(f"notebooks/{row.chapter}", self.env.docname)] if first else ""
            body.append([claim, row.measured, row.value or "(missing)", row.device])
        return [_table(["Claim, source and chapter", "What the book measured", "Value", "Device (profile)"], body,
                       [30, 36, 12, 22])]

    def _exercises(self, node):
        rows = [r for r in classroom.exercise_index(self._root() / "notebooks")
                if f"notebooks/{r['notebook']}" in self.env.found_docs]
        body = [[_doc_link(f"notebooks/{r['notebook']}", self.env.docname),
                 [r["title"], nodes.literal(r["check"], r["check"])], r["goal"]] for r in rows]
        return [_table(["Chapter", "Exercise and its check", "Learning goal"], body, [20, 30, 50])]

    def _times(self, node):
        times = classroom.load_notebook_times(self._root() / classroom.NOTEBOOK_TIMES)
        chapters = sorted(d for d in self.env.found_docs if d.startswith("notebooks/"))
        body = []
        for docname in chapters:
            key = docname.split("/", 1)[1]
            cells = []
            for profile in PROFILES:
                record = times.get(profile, {}).get(key)
                cells.append(f"{record['seconds']:.0f} s" if record else "not measured")
            body.append([_doc_link(docname, self.env.docname), *cells])
        out = [_table(["Chapter", *[f"{p} profile" for p in PROFILES]], body, [40, 20, 20, 20])]
        notes = nodes.bullet_list()
        for profile in PROFILES:
            records = [times.get(profile, {}).get(d.split("/", 1)[1]) for d in chapters]
            records = [r for r in records if r]
            if not records:
                continue
            hows = sorted({f"{r['how']} on {r['device']}" for r in records})
            dates = sorted(r["date"][:10] for r in records)
            span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
            loads = sorted(r["load"] for r in records if r.get("load") is not None)
            cores = max((r.get("cores") or 0 for r in records), default=0)
            busy = (f"; load average {loads[0]:g} to {loads[-1]:g} on {cores} cores at the end of the runs (above "
                    f"the number of cores, other jobs shared the machine and the times are longer than on an idle "
                    f"one)" if loads and cores else "")
            notes += nodes.list_item("", nodes.paragraph(
                text=f"{profile}: measured by {'; '.join(hows)}, {span}{busy}."))
        if len(notes):
            out.append(notes)
        return out


def _record_book_times(app, env) -> None:
    """After every notebook of the build has been executed (or taken from the cache): record their run times."""
    from myst_nb.sphinx_ import NbMetadataCollector

    profile = classroom.current_profile_name()
    target = Path(app.srcdir) / classroom.NOTEBOOK_TIMES
    for docname in sorted(env.found_docs):
        if not docname.startswith("notebooks/"):
            continue
        known = docname in NbMetadataCollector.get_doc_data(env)
        data = NbMetadataCollector.get_exec_data(env, docname) if known else None
        if not data or not data.get("succeeded") or data.get("runtime") is None:
            continue
        how = "jupyter-book build"  # the runtime jupyter-cache recorded when it executed the notebook
        classroom.record_notebook_time(docname.split("/", 1)[1], float(data["runtime"]), profile, how,
                                       path=target, date=data.get("mtime"), with_load=False)


def _outdated(app, env, added, changed, removed):
    """Pages with generated tables are rebuilt every time: what they show lives outside their source."""
    return sorted(getattr(env, "labkit_dynamic_docs", set()) - set(removed))


def _purge(app, env, docname):
    getattr(env, "labkit_dynamic_docs", set()).discard(docname)


def _merge(app, env, docnames, other):
    env.labkit_dynamic_docs = getattr(env, "labkit_dynamic_docs", set()) | getattr(other, "labkit_dynamic_docs", set())


def setup(app):
    app.add_node(labkit_pending)
    app.add_directive("labkit-claims", ClaimsDirective)
    app.add_directive("labkit-exercises", ExercisesDirective)
    app.add_directive("labkit-notebook-times", NotebookTimesDirective)
    app.add_post_transform(FillTables)
    app.connect("env-get-outdated", _outdated)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-updated", _record_book_times)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
