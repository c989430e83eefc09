"""The one line a failed pip or uv run is reported by must carry the reason, not a heading."""

from bundler.fetch.tooling import error_line

UV_NO_SOLUTION = """\
  × No solution found when resolving dependencies:
  ╰─▶ Because there is no version of torch==9.9.9 and you require torch==9.9.9, we can conclude that your
      requirements are unsatisfiable.
"""


def test_uv_resolution_failure_keeps_the_reason():
    line = error_line(UV_NO_SOLUTION)
    heading = "No solution found when resolving dependencies: "
    assert line.startswith(heading + "Because there is no version of torch==9.9.9")
    assert "\n" not in line


def test_pip_error_line_and_fallbacks():
    pip = "Collecting x\nERROR: Could not find a version that satisfies x==1\n"
    assert error_line(pip).startswith("ERROR: Could")
    assert error_line("just some output\nlast line\n") == "last line"
    assert error_line("") == "(no output)"
