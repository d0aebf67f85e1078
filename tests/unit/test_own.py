"""rayfleet.jobs.own (submit's checks) and the error lines of own Serve apps, without a cluster."""

from __future__ import annotations

import pytest

from rayfleet.errors import ConfigError, JobError
from rayfleet.jobs import own
from rayfleet.jobs.submit import JobInfo
from rayfleet.serve.deploy import _user_error

pytestmark = pytest.mark.unit

# What Ray's JobInfo.message says when a job's pip requirements fail (Ray 2.60, trimmed).
PIP_FAILED = (
    "runtime_env setup failed: Failed to set up runtime environment.\n"
    "Could not create the actor because its associated runtime env failed to be created.\n"
    "[Node 192.0.2.2] Traceback (most recent call last):\n"
    '  File "/venv/lib/python3.11/site-packages/ray/_private/runtime_env/pip.py", line 252, in _install_pip_packages\n'
    "ray._private.runtime_env.utils.SubprocessCalledProcessError: Run cmd[13] failed with the following details.\n"
    "Last 50 lines of stdout:\n"
    "    Looking in links: /tmp/wh\n"
    "    ERROR: Could not find a version that satisfies the requirement notthere==1.0 (from versions: none)\n"
    "    ERROR: No matching distribution found for notthere==1.0\n")


def _end(status: str, message: str, tail: list[str]) -> own.JobEnd:
    return own.JobEnd(JobInfo("j", status, "python x.py", "submit", "x", 0, 0, message), tail)


def test_env_pairs_and_their_errors():
    assert own.parse_env(["A=1", "B_2=x=y", "EMPTY="]) == {"A": "1", "B_2": "x=y", "EMPTY": ""}
    assert own.parse_env({"A": 1}) == {"A": "1"}
    with pytest.raises(ConfigError, match=r"--env 'A': expected NAME=VALUE"):
        own.parse_env(["A"])
    with pytest.raises(ConfigError, match=r"'A-B' is not a variable name"):
        own.parse_env(["A-B=1"])


def test_prepare_checks_everything_before_submitting(tmp_path):
    (tmp_path / "train.py").write_text("print(1)\n")
    sub = own.prepare(["python", "train.py", "--lr", "1e-3"], working_dir=tmp_path, env=["E=1"], num_cpus=1,
                      resources='{"ssd": 1}')
    assert sub.entrypoint == "python train.py --lr 1e-3" and sub.name == "train"
    assert sub.runtime_env == {"env_vars": {"PYTHONUNBUFFERED": "1", "E": "1"}, "working_dir": str(tmp_path)}
    assert sub.resources == {"ssd": 1} and sub.package_bytes == 9
    req = tmp_path / "requirements.txt"
    req.write_text("# deps\n--no-index\nrfdemo==0.1  # pinned\n\n")
    assert own.prepare("python x.py", requirements=req).runtime_env["pip"] == {
        "packages": ["--no-index", "rfdemo==0.1"], "pip_check": False}
    for kwargs, message in [
        ({"resources": "{ssd"}, r"--resources '\{ssd': not JSON"),
        ({"resources": {"ssd": -1}}, r"expected an object of names to amounts >= 0"),
        ({"resources": {"CPU": 1}}, r"give CPUs and GPUs with --num-cpus and --num-gpus"),
        ({"name": "a b"}, r"--name 'a b'"),
        ({"working_dir": tmp_path / "train.py"}, r"not a directory"),
    ]:
        with pytest.raises(ConfigError, match=message):
            own.prepare("python x.py", **kwargs)
    with pytest.raises(ConfigError, match="No command to run"):
        own.prepare([])


def test_package_size_counts_what_ray_uploads(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("x" * 1000)
    (tmp_path / "big.bin").write_bytes(b"\0" * 5000)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "objects").write_bytes(b"\0" * 10_000)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.pyc").write_bytes(b"\0" * 10_000)
    assert own.check_package(tmp_path) == 6000            # .git and __pycache__ left out, as Ray does
    (tmp_path / ".rayignore").write_text("*.bin\n")
    assert own.check_package(tmp_path) == 1000 + len("*.bin\n")
    monkeypatch.setattr(own, "package_limit", lambda: 3000)   # zipped: 1000 x's compress below the limit
    (tmp_path / ".rayignore").unlink()
    with pytest.raises(JobError) as e:
        own.check_package(tmp_path)
    assert e.value.context.splitlines()[1].split() == ["0.0", "MiB", "big.bin"]


def test_failure_summaries():
    tail = ["starting", "Traceback (most recent call last):", '  File "x.py", line 3, in <module>',
            "    load()", "FileNotFoundError: settings file x.yaml is missing"]
    assert own.failure_summary(_end("FAILED", "Job entrypoint command failed with exit code 1, last available "
                                              "logs (truncated to 20,000 chars):\n...", tail)) == \
        "FAILED (exit code 1): FileNotFoundError: settings file x.yaml is missing"
    assert own.failure_summary(_end("STOPPED", "Job was intentionally stopped.", ["starting"])) == \
        "STOPPED: Job was intentionally stopped."
    assert own.failure_summary(_end("FAILED", PIP_FAILED, [])) == (
        "FAILED: its requirements could not be installed: ERROR: Could not find a version that satisfies the "
        "requirement notthere==1.0 (from versions: none) ERROR: No matching distribution found for notthere==1.0")
    assert own.failure_hint(_end("FAILED", PIP_FAILED, []).info).startswith("Nodes without internet access")
    assert own.failure_hint(_end("FAILED", "Job entrypoint command failed ... Runtime env is setting up. pip", [])
                            .info) is None


def test_user_error_names_the_users_file_line_and_exception():
    text = (
        "Traceback (most recent call last):\n"
        '  File "/venv/lib/python3.11/site-packages/ray/serve/_private/replica.py", line 900, in initialize\n'
        '  File "/tmp/home/ray/session_x/runtime_resources/working_dir_files/file_c712/app.py", line 44, in __init__\n'
        '    model = json.loads((Path(__file__).parent / "model.json").read_text())\n'
        '  File "/root/.pyenv/versions/3.11.7/lib/python3.11/pathlib.py", line 1044, in open\n'
        "FileNotFoundError: [Errno 2] No such file or directory: 'model.json'\n")
    assert _user_error(text) == ("app.py, line 44, in __init__: FileNotFoundError: [Errno 2] No such file or "
                                 "directory: 'model.json'")
    syntax = ('  File "/venv/lib/python3.11/site-packages/ray/_common/utils.py", line 113, in import_attr\n'
              '  File "/tmp/x/runtime_resources/working_dir_files/file_ab12/echo.py", line 10\n'
              '    return {"out" + body["text"]}\n'
              "SyntaxError: invalid syntax\n")
    assert _user_error(syntax) == "echo.py, line 10: SyntaxError: invalid syntax"
    assert _user_error("AttributeError: module 'app' has no attribute 'nothing'\n") == \
        "AttributeError: module 'app' has no attribute 'nothing'"
