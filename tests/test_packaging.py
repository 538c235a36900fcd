"""Packaging and CI integration: the wheel installs and runs in a fresh venv, the GitHub
Action's shell steps run with the action's inputs, and the pre-commit hook gates each file.

Everything here is offline: the wheel is built without build isolation (the test
extras install setuptools and build), and installs use --no-index / --no-deps.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import FIXTURES, REPO

pytestmark = pytest.mark.slow
VERSION = "0.1.0"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the project: builds write build/ and *.egg-info beside the sources, never in the checkout."""
    copy = tmp_path_factory.mktemp("source") / "htsr"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", ".pytest_cache", "build", "dist", "*.egg-info", "benchmarks/work",
    ))
    return copy


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new venv whose only extra path is this environment's site-packages (the dependencies: typer,
    torch, ...). That path is added by a .pth line, which does not run the editable install's finder,
    so `htsr_cli` can only come from what is installed into the venv itself."""

    def make(name: str) -> Path:
        venv = tmp_path_factory.mktemp(name) / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        Path(site, "htsr-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        return venv

    return make


def test_wheel_and_sdist_build_without_warnings_and_the_wheel_runs_in_a_fresh_venv(source, fresh_venv, tmp_path):
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "Deprecat" not in built.stdout + built.stderr  # e.g. the license table form setuptools warns about
    wheel, = dist.glob("htsr_cli-*.whl")
    sdist, = dist.glob("htsr_cli-*.tar.gz")
    assert wheel.name == f"htsr_cli-{VERSION}-py3-none-any.whl"

    names = zipfile.ZipFile(wheel).namelist()
    assert all(name.startswith(("htsr_cli/", f"htsr_cli-{VERSION}.dist-info/")) for name in names), names
    assert "htsr_cli/cli/app.py" in names and f"htsr_cli-{VERSION}.dist-info/licenses/LICENSE" in names
    assert "htsr_cli/diagnosis/md_tree.json" in names  # package data: the MD tree's fitted thresholds
    metadata = zipfile.ZipFile(wheel).read(f"htsr_cli-{VERSION}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Provides-Extra: pandas" in metadata
    sdist_names = tarfile.open(sdist).getnames()
    assert f"htsr_cli-{VERSION}/LICENSE" in sdist_names and f"htsr_cli-{VERSION}/pyproject.toml" in sdist_names

    venv = fresh_venv("wheel")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
         "--no-index", str(wheel)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    # Without PYTHONPATH: a caller's `PYTHONPATH=$PWD` would put the checkout before the venv's own install.
    venv_env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    version = subprocess.run([str(venv / "bin" / "htsr"), "--version"], capture_output=True, text=True, cwd=tmp_path,
                             env=venv_env)
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"htsr {VERSION}\n"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import htsr_cli; print(htsr_cli.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=venv_env)
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the wheel's copy, not the checkout
    analyzed = subprocess.run([str(venv / "bin" / "htsr"), "analyze", str(FIXTURES / "tiny-cnn-trained.pth"), "-f", "json"],
                              capture_output=True, text=True, cwd=tmp_path, env={**venv_env, "HF_HUB_OFFLINE": "1"})
    assert analyzed.returncode == 0 and '"schema": "htsr.report/1"' in analyzed.stdout
    diagnosed = subprocess.run([str(venv / "bin" / "htsr"), "diagnose", "--train-error", "3", "--mode-connectivity-peak",
                                "-20", "--hessian-t", "6", "-f", "json"], capture_output=True, text=True, cwd=tmp_path)
    assert diagnosed.returncode == 0 and '"schema": "htsr.diagnosis/1"' in diagnosed.stdout, diagnosed.stderr
    hook = subprocess.run([str(venv / "bin" / "htsr-gate-hook")], capture_output=True, text=True, cwd=tmp_path, env=venv_env)
    assert (hook.returncode, hook.stderr.splitlines()[0]) == (2, "htsr-gate-hook: error: no file to gate")  # the pre-commit entry


def run_action(source: Path, venv: Path, tmp_path: Path, *inputs: str, skip_install: bool = False):
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "HTSR_PYTHON": str(venv / "bin" / "python"),
        "ACTION_PATH": str(source),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "INPUT_JUNIT": str(tmp_path / "htsr-junit.xml"),
        "PIP_NO_INDEX": "1",  # offline: torch and the dependencies are already there
        "PIP_NO_BUILD_ISOLATION": "0",  # pip's spelling of --no-build-isolation
        "HF_HUB_OFFLINE": "1",
    }
    if skip_install:
        env["SKIP_INSTALL"] = "1"
    return subprocess.run(
        ["bash", str(source / "scripts" / "run-action-locally.sh"), *inputs],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )


def test_action_steps_install_htsr_and_gate_with_the_action_inputs(source, fresh_venv, tmp_path):
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert set(action["inputs"]) >= {"checkpoint", "baseline", "config", "args"}
    assert action["inputs"]["checkpoint"]["required"] is True
    steps = action["runs"]["steps"]
    runs = [step["run"] for step in steps if "run" in step]
    assert runs == ['bash "$ACTION_PATH/scripts/action.sh" install', 'bash "$ACTION_PATH/scripts/action.sh" gate']
    for step in steps:  # inputs reach the shell only through env, never pasted into a script
        assert "inputs." not in step.get("run", "")
    cache = next(step for step in steps if step.get("uses", "").startswith("actions/cache"))
    assert "~/.cache/pip" in cache["with"]["path"] and "~/.cache/htsr" in cache["with"]["path"]
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "${{ inputs.junit }}"

    venv = fresh_venv("action")
    report = tmp_path / "baseline.json"
    config = tmp_path / "gate.toml"
    config.write_text("[tool.htsr.gate]\nmean_alpha_max = 4.5\nmax_alpha_drift = 0.5\n")
    analyzed = subprocess.run([sys.executable, "-c", "from htsr_cli.cli import main; main()", "analyze",
                               str(FIXTURES / "tiny-cnn-trained.pth"), "-f", "json", "-o", str(report), "-q"],
                              capture_output=True, text=True)
    assert analyzed.returncode == 0, analyzed.stderr

    passed = run_action(source, venv, tmp_path, str(FIXTURES / "tiny-cnn-trained.pth"), str(report), str(config))
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert f"htsr {VERSION}" in passed.stdout  # installed from ACTION_PATH, on PATH
    assert "htsr gate PASS: 0 violations" in passed.stdout
    assert "## htsr gate: PASS" in passed.stdout  # the step summary
    assert (tmp_path / "htsr-junit.xml").read_text().startswith("<?xml")

    (tmp_path / "summary.md").unlink()
    failed = run_action(source, venv, tmp_path, str(report), str(report), str(config), "--alpha-max 3 --max-flagged 0",
                        skip_install=True)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "::error title=htsr gate%3A max_flagged::" in failed.stdout  # the args input reached the gate
    assert "## htsr gate: FAIL" in (tmp_path / "summary.md").read_text()


def hook_shim(directory: Path) -> Path:
    """`htsr-gate-hook` as pip installs it (pyproject's [project.scripts]), for this checkout's code."""
    module, function = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["htsr-gate-hook"].split(":")
    directory.mkdir()
    script = directory / "htsr-gate-hook"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
    script.chmod(0o755)
    return directory


def git(cwd: Path, *arguments: str) -> str:
    identity = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    done = subprocess.run(["git", *arguments], cwd=cwd, capture_output=True, text=True, check=True, env={**os.environ, **identity})
    return done.stdout.strip()


def test_pre_commit_hook_runs_under_pre_commit_with_args(tmp_path):
    """pre-commit itself, offline: the hook from a file:// clone pinned by SHA, with args and the README's table."""
    pytest.importorskip("pre_commit")
    [hook] = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "htsr-gate" and hook["language"] == "system" and hook["pass_filenames"] is True
    import re

    pattern = re.compile(hook["files"])
    assert pattern.search("checkpoints/model.safetensors") and pattern.search("reports/good-report.json")
    assert not pattern.search("package.json") and not pattern.search("baseline.json")

    hooks = tmp_path / "hooks"  # the hook's repository: this checkout's .pre-commit-hooks.yaml, committed
    hooks.mkdir()
    shutil.copy(REPO / ".pre-commit-hooks.yaml", hooks)
    git(hooks, "init", "-q")
    git(hooks, "add", ".")
    git(hooks, "commit", "-q", "-m", "hooks")
    sha = git(hooks, "rev-parse", "HEAD")

    project = tmp_path / "project"
    (project / "reports").mkdir(parents=True)
    htsr = [sys.executable, "-c", "from htsr_cli.cli import main; main()"]
    good = project / "reports" / "good-report.json"
    subprocess.run([*htsr, "analyze", str(FIXTURES / "tiny-cnn-trained.pth"), "-f", "json", "-o", str(good), "-q"], check=True)
    shutil.copy(good, project / "baseline.json")
    # a table that sets max_alpha_drift: without --baseline it is reported as not checked, not exit 2
    (project / "pyproject.toml").write_text("[tool.htsr.gate]\nmean_alpha_max = 4.5\nmax_alpha_drift = 0.5\n")
    config = f"""repos:
  - repo: {hooks.as_uri()}
    rev: {sha}
    hooks:
      - id: htsr-gate
        args: [--baseline, baseline.json, --format, github]
"""
    (project / ".pre-commit-config.yaml").write_text(config)
    git(project, "init", "-q")
    git(project, "add", ".")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache"),
           "PATH": f"{hook_shim(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}"}

    def pre_commit(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pre_commit", "run", "--color", "never", *arguments],
                              cwd=project, capture_output=True, text=True, env=env)

    passed = pre_commit("--all-files", "--verbose")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "htsr gate PASS" in passed.stdout and "Passed" in passed.stdout

    # a second report whose every alpha is 10: drift from the baseline, the args reached the gate
    bad = project / "reports" / "bad-report.json"
    bad.write_text(good.read_text().replace('"alpha": ', '"alpha": 10.0, "ignored": '))
    git(project, "add", ".")
    failed = pre_commit("--all-files")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "::error title=htsr gate%3A max_alpha_drift::" in failed.stdout
    assert failed.stdout.count("htsr gate PASS") == 1 and failed.stdout.count("htsr gate FAIL") == 1

    # without args, the README's table alone: drift not checked (a warning), the rest judged
    (project / ".pre-commit-config.yaml").write_text(config.replace("        args: [--baseline, baseline.json, --format, github]\n", ""))
    bad.unlink()
    git(project, "add", "-A")
    no_args = pre_commit("--all-files", "--verbose")
    assert no_args.returncode == 0, no_args.stdout + no_args.stderr
    assert "max_alpha_drift  (model)  not checked: no baseline given" in no_args.stdout


def test_gate_hook_splits_options_from_files_and_exits_with_the_worst_code(tmp_path, monkeypatch):
    from htsr_cli.cli._precommit import gate_command, options_taking_values, split_arguments

    valued = options_taking_values(gate_command())
    assert {"--baseline", "--config", "-o", "--format", "--xmin"} <= valued and "--allow-empty" not in valued
    assert split_arguments(["--baseline", "b.json", "--allow-empty", "-f", "json", "a.pth", "c-report.json"], valued) == (
        ["--baseline", "b.json", "--allow-empty", "-f", "json"], ["a.pth", "c-report.json"]
    )
    assert split_arguments(["--baseline=b.json", "--", "-odd.pth"], valued) == (["--baseline=b.json"], ["-odd.pth"])

    good = tmp_path / "good-report.json"
    htsr = [sys.executable, "-c", "from htsr_cli.cli import main; main()"]
    subprocess.run([*htsr, "analyze", str(FIXTURES / "tiny-cnn-trained.pth"), "-f", "json", "-o", str(good), "-q"], check=True)
    env = {**os.environ, "PATH": f"{hook_shim(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}"}
    hook = ["htsr-gate-hook"]
    ok = subprocess.run([*hook, "--mean-alpha-max", "4.5", str(good)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    worst = subprocess.run([*hook, "--mean-alpha-max", "2", str(good), str(tmp_path / "missing-report.json")],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert worst.returncode == 2, worst.stdout + worst.stderr  # 1 for the first file, 2 for the missing one
    assert worst.stdout.count("htsr gate on ") == 1 and "FAIL" in worst.stdout
    for arguments, message in (([], "no file to gate"), (["--baseline"], "--baseline needs a value")):
        usage = subprocess.run([*hook, *arguments], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert (usage.returncode, usage.stderr.splitlines()[0]) == (2, f"htsr-gate-hook: error: {message}")