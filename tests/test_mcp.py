"""The app as an MCP server (launch(mcp_server=True)): an MCP client on loopback lists the public endpoints
as tools, with their docstrings as descriptions, and calls one."""
import asyncio

import pytest

from conftest import launch_app

mcp = pytest.importorskip("mcp", reason="the mcp package is missing: pip install 'gradio[mcp]'")
from mcp.client.streamable_http import streamablehttp_client  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

TOOLS = {"generate", "train_start", "train_stop", "train_status", "use_trained", "use_shipped", "save_model",
         "export_csv", "telemetry", "compress", "decompress", "neural_compress"}


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    blocks, url = launch_app(tmp_path_factory.mktemp("no-model"), tmp_path_factory.mktemp("runs"))
    yield url
    blocks.close()


async def list_and_call(url: str):
    async with streamablehttp_client(f"{url}gradio_api/mcp/") as (read, write, _):
        async with mcp.ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            result = await session.call_tool("compress", {"source": "aaaaaaaaaaaaaaaa", "mode": "text",
                                                          "method": "auto", "parity": True})
            return tools, result


def test_mcp_server_lists_the_tools_and_runs_one(url):
    tools, result = asyncio.run(list_and_call(url))
    by_name = {t.name: t for t in tools}
    assert TOOLS <= set(by_name), sorted(by_name)
    generate = by_name["generate"]
    assert generate.description.startswith("Continue a prompt with the bit-level language model")
    props = generate.inputSchema["properties"]
    assert {"prompt", "mode", "n_bytes", "temperature", "seed", "compress"} <= set(props)
    assert "0 to 4,294,967,295" in props["seed"]["description"]
    assert "visitor" not in props and "request" not in props  # session plumbing is not a tool argument
    assert "corpus" in by_name["train_start"].inputSchema["properties"]
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert not result.isError and "compression ratio" in text, text



def test_starting_the_mcp_server_prints_no_state_warning(tmp_path):
    """Gradio warns at every start that a tool has a gr.State input; over MCP that is by design (each call
    is its own visitor), so `python app.py`'s start prints no such warning (and still serves MCP)."""
    import subprocess
    import sys
    from pathlib import Path
    from conftest import free_port
    code = ("import app, sys; b = app.build_demo(model_dir=sys.argv[1], run_root=sys.argv[2]); "
            "b.launch(server_name='127.0.0.1', server_port=int(sys.argv[3]), prevent_thread_lock=True, quiet=True, "
            "**app.LAUNCH_KWARGS); print('MCP', b.mcp_server); b.close()")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "no-model"), str(tmp_path / "runs"),
                           str(free_port())],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gr.State input" not in done.stderr and "MCP True" in done.stdout, done.stderr[-2000:]


def test_python_app_py_runs_torch_on_one_thread_and_generates_in_workers():
    """`python app.py` (`app.serve`) sets one intra-op thread before it builds and launches the app, and asks
    for BITLM_GENERATE_WORKERS generation processes."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    code = ("import app, torch; torch.set_num_threads(2)\n"
            "class Fake:\n    def launch(self, **kw): print('threads', torch.get_num_threads())\n"
            "app.build_demo = lambda **kw: print('workers', kw.get('generate_workers')) or Fake(); app.serve()")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "BITLM_GENERATE_WORKERS": "3"})
    assert done.returncode == 0 and "threads 1" in done.stdout and "workers 3" in done.stdout, done.stderr[-2000:]
