"""The `rlm` command and the demo, driven against the fake server."""

from __future__ import annotations

import json

import pytest
import structlog

from rlm import cli, demo
from rlm.testing import Script, split


@pytest.fixture(autouse=True)
def keep_logging_config():
    """The CLI configures structlog for the process; put the test suite's configuration back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_rlm_run_prints_the_answer_on_stdout_and_progress_on_stderr(server, tmp_path, capsys, monkeypatch,
                                                                    environment):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    server.policy = split(Script(["```repl\nprint(context['k'])\n```", "FINAL(from the cli)"]))
    context = tmp_path / "ctx.json"
    context.write_text(json.dumps({"k": "v"}))
    code = cli.main(["run", "--context", str(context), "--base-url", server.openai_base_url, "--sandbox", environment,
                     "--log-dir", str(tmp_path / "logs"), "What is k?"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.strip() == "from the cli"
    assert "status: final" in err and "iteration 1" in err and "run log:" in err
    assert "v" in server.requests[-1].last_user
    assert len(list((tmp_path / "logs").glob("*.jsonl"))) == 1


def test_rlm_run_exit_code_names_a_limit(server, tmp_path, capsys, monkeypatch, environment):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    context = tmp_path / "ctx.txt"
    context.write_text("text")
    code = cli.main(["run", "--context", str(context), "--base-url", server.openai_base_url, "--sandbox", environment,
                     "--max-iterations", "1", "--log-dir", str(tmp_path), "--quiet", "q"])
    assert code == 2
    assert "status: max_iterations" in capsys.readouterr().err


def test_rlm_sandbox_delegates_to_the_sandbox_cli(monkeypatch):
    seen = []
    import sandboxes.backends.docker.cli as sandbox_cli

    monkeypatch.setattr(sandbox_cli, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["sandbox", "reap", "--dry-run"]) == 0
    assert seen == [["reap", "--dry-run"]]


def test_demo_with_the_fake_model_answers_correctly(tmp_path, capsys, monkeypatch, environment):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert demo.main(["--size-mb", "2", "--sandbox", environment, "--log-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "-> correct (fake model" in out
    assert "using the bundled fake model" in err
