import json

from rlm.trajectory import RLMLogger, make_event, redact


def test_redact_removes_secret_fields_at_any_depth():
    config = {"backend_kwargs": {"model_name": "m", "api_key": "sk-1", "base_url": "u"},
              "other_backend_kwargs": [{"API_KEY": "x", "model_name": "n", "auth_token": "t"}]}
    clean = redact(config)
    assert clean == {"backend_kwargs": {"model_name": "m", "base_url": "u"},
                     "other_backend_kwargs": [{"model_name": "n"}]}
    assert "sk-1" not in json.dumps(clean)


def test_each_event_is_on_disk_as_soon_as_it_is_written(tmp_path):
    run_log = RLMLogger(tmp_path).open("abc")
    run_log.write(make_event("run_start", "abc", 0.0, {"config": {"a": 1}}))
    # Read while the log is still open: a crash now would leave exactly this valid file.
    lines = run_log.path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["run_start"]
    run_log.write(make_event("cell", "abc", 0.5, {"code": "print(1)", "stdout": "1\n"}))
    lines = run_log.path.read_text().splitlines()
    assert json.loads(lines[1])["stdout"] == "1\n" and json.loads(lines[1])["run_id"] == "abc"
    run_log.close()
