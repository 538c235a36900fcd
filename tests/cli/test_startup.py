"""Start-up: commands import only what they need (torch only when something is analysed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES


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


def test_module_order_is_cached_per_architecture(tmp_path):
    """The second analysis of an architecture gets its module order without importing transformers."""
    code = (
        "import sys\n"
        "from htsr_cli.checkpoints import open_checkpoint\n"
        f"keys = [info.key for info in open_checkpoint({str(FIXTURES / 'tiny-llama')!r}).tensors()]\n"
        "print('transformers' in sys.modules, keys[0], keys[3], keys[-1])"
    )
    env_code = f"import os; os.environ['HTSR_CACHE_DIR'] = {str(tmp_path)!r}\n" + code
    first = run_python(env_code).split()
    second = run_python(env_code).split()
    assert first[0] == "True" and second[0] == "False"
    assert first[1:] == second[1:] == [
        "model.embed_tokens.weight", "model.layers.0.self_attn.v_proj.weight", "lm_head.weight",
    ]
    assert len(list((tmp_path / "module-order").glob("*.json"))) == 1


def test_the_cli_asks_torch_for_huge_pages_and_keeps_a_users_choice():
    code = (
        "import os, sys\n"
        "sys.argv = ['htsr', '--version']\n"
        "from htsr_cli.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(os.environ.get('THP_MEM_ALLOC_ENABLE'))\n"
    )
    assert run_python("import os; os.environ.pop('THP_MEM_ALLOC_ENABLE', None)\n" + code).split()[-1] == "1"
    assert run_python("import os; os.environ['THP_MEM_ALLOC_ENABLE'] = '0'\n" + code).split()[-1] == "0"


def test_torch_puts_large_tensors_on_huge_pages_when_asked():
    """What the CLI's setting buys: torch advises the kernel to back a large tensor with transparent
    huge pages (MADV_HUGEPAGE: `hg` in the mapping's VmFlags), and does not when it is not asked.

    The advice is checked, not AnonHugePages: whether the kernel finds free 2 MiB pages to follow
    it depends on how fragmented the machine's memory is, which a loaded machine decides.
    """
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not setting.is_file() or "[never]" in setting.read_text():
        pytest.skip("this kernel has transparent huge pages off")

    def advice_flags(enable: str) -> list[str]:
        """The VmFlags of the mapping that holds a 256 MB tensor made with THP_MEM_ALLOC_ENABLE=enable."""
        return run_python(
            "import os, re\n"
            f"os.environ['THP_MEM_ALLOC_ENABLE'] = {enable!r}\n"
            "import torch\n"
            "big = torch.empty(64 << 20, dtype=torch.float32)  # 256 MB: torch advises at allocation\n"
            "for mapping in re.split(r'\\n(?=[0-9a-f]+-[0-9a-f]+ )', open('/proc/self/smaps').read()):\n"
            "    start, end = (int(bound, 16) for bound in mapping.split()[0].split('-'))\n"
            "    if start <= big.data_ptr() < end:\n"
            "        print(next(line for line in mapping.splitlines() if line.startswith('VmFlags:')))\n"
        ).split()

    assert "hg" in advice_flags("1")
    assert "hg" not in advice_flags("0")
