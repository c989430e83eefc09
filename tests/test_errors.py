from appliance.errors import EXIT_CODES, EnclaveError


def test_exit_codes_are_unique_and_documented():
    assert len(EXIT_CODES) == len(set(EXIT_CODES))
    for code, cls in EXIT_CODES.items():
        assert issubclass(cls, EnclaveError)
        assert cls.summary and cls.summary != EnclaveError.summary, cls
        assert 2 <= code <= 125


def test_cli_usage_error_is_one_line_and_exit_2():
    from tests.conftest import run_enclave

    proc = run_enclave("no-such-command")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "No such command" in proc.stderr


def _codes_defined_in_source() -> dict[int, str]:
    """Every `exit_code = N` in a class body under appliance/ and bundler/, by AST."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    found: dict[int, str] = {}
    for path in [*repo.joinpath("appliance").rglob("*.py"), *repo.joinpath("bundler").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for stmt in node.body:
                target = getattr(stmt, "target", None) or (getattr(stmt, "targets", None) or [None])[0]
                value = getattr(stmt, "value", None)
                if (
                    isinstance(target, ast.Name)
                    and target.id == "exit_code"
                    and isinstance(value, ast.Constant)
                ):
                    found[value.value] = node.name
    return found


def test_exit_code_table_lists_every_code():
    import json

    from tests.conftest import run_enclave

    proc = run_enclave("exit-codes", "--json", check=True)
    rows = {r["code"]: r["error"] for r in json.loads(proc.stdout)}
    assert rows.pop(0) == "-"
    assert rows == _codes_defined_in_source()


def test_error_message_is_printed_verbatim_not_as_markup(tmp_path):
    from tests.conftest import run_enclave

    bad = tmp_path / "[hosts].yaml"
    bad.write_text("apiVersion: nope\n")
    proc = run_enclave("bundle", "create", str(bad), "-o", str(tmp_path / "out"), "--key", str(bad))
    assert proc.returncode != 0
    assert "[hosts].yaml" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_readme_exit_code_table_is_the_generated_one():
    from pathlib import Path

    from tests.conftest import run_enclave

    table = run_enclave("exit-codes", check=True).stdout.strip()
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert table in readme, "README's exit-code table is stale: paste `enclave exit-codes` into it"
