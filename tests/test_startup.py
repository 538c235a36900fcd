"""Start-up: commands import only what they need (torch only when something is analysed)."""

import json
import subprocess
import sys

from conftest import FIXTURES


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_loading_the_cli_imports_no_heavy_library():
    out = run_python(
        "import sys, htsr_cli.cli.app\n"
        "print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))"
    )
    assert out.strip() == "[]"


def test_gate_and_compare_on_saved_reports_do_not_import_torch(tmp_path, cli):
    report = tmp_path / "report.json"
    assert cli("analyze", FIXTURES / "tiny-cnn-trained.pth", "-f", "json", "-o", report).exit_code == 0
    out = run_python(
        "import sys\n"
        "from htsr_cli.cli.app import app\n"
        f"for args in (['gate', {str(report)!r}], ['compare', {str(report)!r}, {str(report)!r}]):\n"
        "    code = app(args, standalone_mode=False)\n"
        "    assert code == 0, code\n"
        "print('torch' in sys.modules)"
    )
    assert out.strip().splitlines()[-1] == "False"
    assert json.loads(report.read_text())["schema"] == "htsr.report/1"
