"""The Codec tab's files (`codec_tab.compress_upload`, `codec_tab.decompress_upload`, `plots.file_codec_table`): round
trips of an upload and of typed text through `.blm` files, the table beside zlib, bz2 and lzma, the caps, and
every failure (nothing, not a file, empty, too large, truncated, flipped, foreign, another model) as a
friendly message and one log line."""
import logging
from pathlib import Path

import pytest

from bitlm.app import codec_tab, plots

from bitlm.compress import container
from bitlm.model.config import BitLMConfig
from bitlm.model.transformer import BitTransformerLM
from bitlm.app.visitors import AppModel, load_app_model
from conftest import assert_friendly


def upload(path, name=None):
    """What an upload box sends (Gradio's FileData as a dict)."""
    path = Path(path)
    return {"path": str(path), "orig_name": name or path.name, "meta": {"_type": "gradio.FileData"}}


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "visitor"
    folder.mkdir()
    return folder


DATA = bytes(range(256)) + "to be or not to be — 世界 🙂\n".encode() * 8


def test_file_round_trip_and_table(tiny_model, tmp_path, out):
    calls = []
    result = codec_tab.compress_upload(tiny_model, upload(write(tmp_path, "notes.bin", DATA)), "ignored", out,
                                  lambda fraction, what: calls.append(fraction))
    assert result.status.startswith("✓") and result.path == str(out / "notes.bin.blm"), result.status
    assert "“notes.bin.blm” above" in result.status          # the file boxes sit above the status line
    blob = open(result.path, "rb").read()
    assert container.read_header(blob).method_name in result.status
    table = result.table
    assert list(table["method"]) == ["neural+cm", "cm", "neural", "lzma", "bz2", "zlib", "stored"]
    assert list(table["chosen"]).count("✓") == 1
    chosen = table[table["chosen"] == "✓"].iloc[0]
    assert chosen["file bytes"] == len(blob) == table["file bytes"].min()
    assert chosen["bits per byte"] == round(8 * len(blob) / len(DATA), 3)
    assert calls and calls[-1] == 1.0  # the model's progress
    back = codec_tab.decompress_upload(tiny_model, upload(result.path), out)
    assert back.status.startswith("✓") and back.path == str(out / "notes.bin"), back.status
    assert open(back.path, "rb").read() == DATA


def test_typed_text_round_trip(tiny_model, out):
    result = codec_tab.compress_upload(tiny_model, None, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb", out)
    assert result.status.startswith("✓") and result.path.endswith("text.blm")
    back = codec_tab.decompress_upload(tiny_model, upload(out / "text.blm"), out)
    assert open(back.path, "rb").read() == b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb"
    assert back.path.endswith("/text")


def test_a_neural_file_round_trips_and_needs_its_model(tiny_model, tmp_path, out):
    blob = container.compress_file(DATA[:300], tiny_model.model, methods=("neural",)).blob
    path = write(tmp_path, "n.blm", blob)
    back = codec_tab.decompress_upload(tiny_model, upload(path), out)
    assert back.status.startswith("✓") and "neural" in back.status and open(back.path, "rb").read() == DATA[:300]
    other = load_app_model(tmp_path / "none", fallback_preset="small")
    assert_friendly(codec_tab.decompress_upload(other, upload(path), out).status, "compressed with model",
                    "to switch model here")


def test_large_inputs_skip_the_model_and_are_capped(tiny_model, tmp_path, out, monkeypatch):
    monkeypatch.setattr(codec_tab, "NEURAL_FILE_MAX_BYTES", 100)
    result = codec_tab.compress_upload(tiny_model, upload(write(tmp_path, "big.txt", DATA)), "", out)
    assert result.status.startswith("✓") and "The model was not tried" in result.status
    assert "neural" not in set(result.table["method"])
    neural = container.compress_file(DATA[:200], tiny_model.model, methods=("neural",)).blob
    assert_friendly(codec_tab.decompress_upload(tiny_model, upload(write(tmp_path, "n.blm", neural)), out).status,
                    "coded by the model", "python -m bitlm.cli.compress decompress")
    monkeypatch.setattr(codec_tab, "FILE_MAX_BYTES", 200)
    assert_friendly(codec_tab.compress_upload(tiny_model, upload(tmp_path / "big.txt"), "", out).status,
                    "the limit here is 200 bytes")
    classic = container.compress_file(DATA, None).blob
    assert_friendly(codec_tab.decompress_upload(tiny_model, upload(write(tmp_path, "c.blm", classic)), out).status,
                    "the app decompresses at most 200")


def test_untrained_and_v1_notes(tiny_model, out):
    assert "untrained" in codec_tab.compress_upload(tiny_model, None, "hello there", out).status
    v1 = AppModel(BitTransformerLM(BitLMConfig(n_layer=1, n_head=2, n_embd=16, block_size=144, pos="learned")), "v1")
    result = codec_tab.compress_upload(v1, None, "hello there, hello there", out)
    assert result.status.startswith("✓") and "The model was not tried" in result.status and "ALiBi" in result.status
    blob = container.compress_file(b"hello there", tiny_model.model, methods=("neural",)).blob
    assert_friendly(codec_tab.decompress_upload(v1, upload(write(out, "n.blm", blob)), out).status, "Cannot decompress")


BLOB = container.compress_file(DATA, None).blob
BAD_BLOBS = {
    "empty": (b"", "is empty"),
    "truncated": (BLOB[:-5], "Cannot decompress"),
    "header only": (BLOB[:3], "Cannot decompress"),
    "flipped": (BLOB[:20] + bytes([BLOB[20] ^ 1]) + BLOB[21:], "Cannot decompress"),
    "foreign": (b"PK\x03\x04 a zip file, say", "not a BitLM compressed file"),
}


@pytest.mark.parametrize("name", BAD_BLOBS)
def test_bad_compressed_files_are_friendly(tiny_model, tmp_path, out, caplog, name):
    data, fragment = BAD_BLOBS[name]
    with caplog.at_level(logging.WARNING, logger="bitlm.app"):
        result = codec_tab.decompress_upload(tiny_model, upload(write(tmp_path, "x.blm", data)), out)
    assert result.path is None
    assert_friendly(result.status, fragment)
    assert "\n" not in result.status
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and not any(r.exc_info for r in caplog.records), lines


@pytest.mark.parametrize("value,fragment", [(None, "No compressed file uploaded"), ("", "No compressed file"),
                                            ("/etc/passwd", "is not a file"), (12, "is not a file"),
                                            ({"path": "/nonexistent/x.blm"}, "is gone")])
def test_bad_uploads_are_friendly(tiny_model, out, value, fragment):
    assert_friendly(codec_tab.decompress_upload(tiny_model, value, out).status, fragment)


@pytest.mark.parametrize("value,text,fragment", [(None, "", "codec input is empty"), (None, 12, "must be text"),
                                                 ("/etc/passwd", "x", "is not a file")])
def test_bad_compress_inputs_are_friendly(tiny_model, out, value, text, fragment):
    result = codec_tab.compress_upload(tiny_model, value, text, out)
    assert result.path is None
    assert_friendly(result.status, fragment)


def test_an_empty_upload_is_refused(tiny_model, tmp_path, out):
    assert_friendly(codec_tab.compress_upload(tiny_model, upload(write(tmp_path, "e.txt", b"")), "x", out).status,
                    "“e.txt” is empty")


def test_file_names_are_made_safe(tiny_model, tmp_path, out):
    result = codec_tab.compress_upload(tiny_model, upload(write(tmp_path, "f.txt", b"abc"), "../../etc/pa ss?wd"), "", out)
    assert result.path == str(out / "pa_ss_wd.blm")


def test_file_codec_table():
    table = plots.file_codec_table({"neural": 40, "lzma": 30, "zlib": 50}, 80, "lzma")
    assert list(table.columns) == ["method", "file bytes", "bits per byte", "chosen"]
    assert list(table["bits per byte"]) == [4.0, 3.0, 5.0] and list(table["chosen"]) == ["", "✓", ""]
    assert plots.file_codec_table({}, 0, "").empty


def test_mcp_lists_the_file_tools_and_compresses_text(tmp_path_factory):
    """The two endpoints are MCP tools described by their docstrings; compress_file runs on typed text."""
    import asyncio

    mcp = pytest.importorskip("mcp", reason="the mcp package is missing: pip install 'gradio[mcp]'")
    from mcp.client.streamable_http import streamablehttp_client

    from conftest import launch_app

    async def list_and_call(url: str):
        async with streamablehttp_client(f"{url}gradio_api/mcp/") as (read, write, _):
            async with mcp.ClientSession(read, write) as session:
                await session.initialize()
                tools = (await session.list_tools()).tools
                return tools, await session.call_tool("compress_file", {"text": "to be or not to be, to be"})

    blocks, url = launch_app(tmp_path_factory.mktemp("no-model"), tmp_path_factory.mktemp("runs"))
    try:
        tools, result = asyncio.run(list_and_call(url))
    finally:
        blocks.close()
    by_name = {t.name: t for t in tools}
    assert by_name["compress_file"].description.startswith("Compress a file losslessly into a .blm file")
    assert by_name["decompress_file"].description.startswith("Decompress a .blm file")
    assert {"upload", "text"} <= set(by_name["compress_file"].inputSchema["properties"])
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert not result.isError and "text.blm" in text, text


def test_decoding_a_model_coded_file_reports_progress_often(tiny_model, tmp_path, out):
    """A 12 KiB model-coded file (the cap) decodes in seconds: its progress bar moves at least 16 times, not once or
    twice (issue 22: it sat behind a bare spinner)."""
    data = (DATA * 40)[:codec_tab.NEURAL_FILE_MAX_BYTES]
    blob = container.compress_file(data, tiny_model.model, methods=("neural+cm",)).blob
    calls = []
    back = codec_tab.decompress_upload(tiny_model, upload(write(tmp_path, "p.blm", blob)), out,
                                       lambda fraction, what: calls.append(fraction))
    assert back.status.startswith("✓"), back.status
    assert len(calls) >= 16 and calls == sorted(calls) and calls[-1] == 1.0, calls


@pytest.mark.parametrize("method", ["neural", "neural+cm", "cm", "lzma"])
@pytest.mark.parametrize("where", ["header", "payload"])
def test_a_damaged_file_is_called_damaged_without_a_model_hint(tiny_model, tmp_path, out, method, where):
    """One flipped byte, in the header or the payload: the app says the file is damaged (not the range coder's
    own words) and gives no hint about switching models, which would not help."""
    blob = container.compress_file(DATA[:600], tiny_model.model, methods=(method,)).blob
    at = 5 if where == "header" else len(blob) // 2
    damaged = blob[:at] + bytes([blob[at] ^ 0x10]) + blob[at + 1:]
    status = codec_tab.decompress_upload(tiny_model, upload(write(tmp_path, "d.blm", damaged)), out).status
    assert_friendly(status, "Cannot decompress", "damaged")
    assert "model" not in status.split("—")[-1] and "Use trained model" not in status, status
