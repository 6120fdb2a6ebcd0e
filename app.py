"""BitLM's Gradio app (local demo and Hugging Face Space): Generate, Train, Telemetry and Codec tabs.

This file only lays out the UI, one function per tab, and wires events to `bitlm.app.endpoints` (which acts for
the calling visitor); the work is in `bitlm.app`'s tab modules, ownership in `bitlm.app.visitors`, figures in
`bitlm.app.plots`.
Run `python app.py`; GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose the address, BITLM_RUN_MINUTES caps a training run (10),
BITLM_MODEL_DIR names the shipped model's folder (assets; its gate.json holds the safety gate's floors),
BITLM_DRAFT_CORPUS the corpus it was trained on (shakespeare; "none": generate without speculation),
BITLM_GENERATE_WORKERS how many processes generate (one per core, at most 4; 0: on the request's thread).
The public endpoints are also an MCP server (/gradio_api/mcp/).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from gradio.data_classes import FileData, GradioRootModel

from bitlm.app import codec_tab, generate_tab, plots, telemetry_tab
from bitlm.app.endpoints import IDLE, Endpoints
from bitlm.app.workers import GenerateWorkers
from bitlm.app.visitors import CORPORA, TRAIN_MAX_STEPS, UPLOAD_MAX_BYTES, SharedTrainer, Visitor, load_app_model
from bitlm.bits.codec import METHODS
from bitlm.train.trainer import PRESETS

LAUNCH_KWARGS = dict(
    theme=gr.themes.Soft(),
    css=".bits textarea { font-family: ui-monospace, monospace; font-size: 12px; }",
    max_file_size=UPLOAD_MAX_BYTES,
    mcp_server=True,
)
# Over MCP a tool call has no session, so each gets the visitor State's default (the shipped model, a run of
# its own): by design (docs/app.md), so Gradio's warning that a State "will not be updated between tool
# calls" says nothing a user can act on, at every start. Only that warning is silenced.
warnings.filterwarnings("ignore", message="This MCP server includes a tool that has a gr.State input",
                        category=UserWarning)
RUN_MINUTES = float(os.environ.get("BITLM_RUN_MINUTES", "10"))
MODEL_DIR = os.environ.get("BITLM_MODEL_DIR", "assets")
DRAFT_CORPUS = os.environ.get("BITLM_DRAFT_CORPUS", "shakespeare")
GENERATE_WORKERS = int(os.environ.get("BITLM_GENERATE_WORKERS", str(min(os.cpu_count() or 1, 4))))

INTRO = """# BitLM — a language model that reads and writes bits
Text becomes UTF-8 bytes, each byte 8 data bits plus an even-parity bit. Bit streams compress losslessly,
and the model can read them through the codec (**Enable Compression**) or, trained multi-task, directly."""

# Events take their inputs as sent (preprocess=False): the endpoints check every value themselves, so a
# wrong type over the API gets the app's own message. How many requests of each kind run at once: two
# cores, so a few; a streamed generation must not hold up every other visitor's.
RAW = dict(preprocess=False)


class AnyUpload(GradioRootModel):
    """What the upload box accepts over the API: a file goes through Gradio's upload checks as usual, and a
    wrong value ('', a number, a server path) reaches the endpoint, which refuses it in its own words."""
    root: FileData | Any


def build_generate_tab(api: Endpoints, visitor: gr.State) -> tuple[gr.Radio, gr.Dropdown]:
    """The Generate tab and its events. Returns the gate's fields, which follow the visitor's model."""
    with gr.Tab("Generate", id="generate"):
        with gr.Row():
            with gr.Column():
                mode = gr.Radio(list(generate_tab.PROMPT_MODES), value="text", label="Prompt mode")
                prompt = gr.Textbox("To be, or not to be", lines=4, label="Prompt", elem_id="prompt",
                                    info=f"Text up to {generate_tab.PROMPT_MAX_CHARS:,} characters, or up to "
                                         f"{generate_tab.PROMPT_MAX_BITS:,} bits (0/1, spaces allowed)")
                with gr.Row():
                    n_bytes = gr.Slider(1, generate_tab.GEN_MAX_BYTES, value=48, step=1, label="Bytes to generate",
                                        info=f"1 to {generate_tab.GEN_MAX_BYTES:,}; a typed value outside is set to the "
                                             "nearest end")
                    temperature = gr.Slider(0, generate_tab.TEMPERATURE_MAX, value=0.8, step=0.05, label="Temperature",
                                            info=f"0 (greedy) to {generate_tab.TEMPERATURE_MAX:g}; a typed value outside "
                                                 "is set to the nearest end")
                    seed = gr.Number(0, precision=0, label="Seed",
                                     info=f"0 to {generate_tab.SEED_MAX:,}; empty = random")
                compress = gr.Checkbox(True, label="Enable Compression", elem_id="enable-compression",
                                       info="compress the prompt's bits before the model and decompress its output")
                sizes, default_size = generate_tab.gate_windows(api.shipped)
                with gr.Row():
                    gate_mode = gr.Radio(list(generate_tab.GATE_MODES), value="off", label="Safety gate (K/C/S)",
                                         elem_id="gate-mode", info=generate_tab.gate_info(api.shipped),
                                         interactive=bool(sizes))
                    gate_window = gr.Dropdown(sizes, value=default_size, label="Gate window (bytes)",
                                              elem_id="gate-window", interactive=bool(sizes), scale=0,
                                              min_width=160)
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                    gen_stop_btn = gr.Button("Stop", variant="stop", elem_id="generate-stop")
            with gr.Column():
                out_text = gr.Textbox(label="Output text", lines=5, elem_id="out-text")
                # Empty states look intended: a number field shows 0 before any value, so the ratios appear
                # with the first generation; the gate's chart only while the gate is on.
                with gr.Row(visible=False) as ratio_row:
                    in_ratio = gr.Number(label="Input compression ratio", precision=3, elem_id="in-ratio")
                    out_ratio = gr.Number(label="Output compression ratio", precision=3, elem_id="out-ratio")
                gen_status = gr.Markdown(label="Generation status", elem_id="gen-status")
                gate_plot = gr.Plot(label="Safety gate", show_label=False, elem_id="gate-plot", visible=False)
                with gr.Accordion("Gate events", open=False):
                    gate_events = gr.JSON(label="Gate events", elem_id="gate-events")
                out_bits = gr.Textbox(label="Output bits (one group per byte frame; bits that complete a "
                                            "mid-frame prompt come first, on a line of their own)",
                                      lines=6, elem_classes="bits", elem_id="out-bits")

    generate_btn.click(api.generate, [prompt, mode, n_bytes, temperature, seed, compress, gate_mode,
                                                  gate_window, visitor],
                                   [out_text, out_bits, in_ratio, out_ratio, gen_status, gate_plot, gate_events,
                                    visitor],
                                   api_name="generate", concurrency_limit=4, **RAW)
    generate_btn.click(lambda: gr.Row(visible=True), None, ratio_row, api_visibility="private")
    gate_mode.change(lambda m: gr.Plot(visible=m != "off"), gate_mode, gate_plot, api_visibility="private")
    # Stop asks the running generation to end (Visitor.stop_current_generation) instead of cancelling its event:
    # the generation then sends its own final result, the text so far with a "Stopped" status. Gradio's
    # `cancels=` raced the stream: its empty completion could reach the page first, which then showed "Error"
    # over every output.
    gen_stop_btn.click(api.generate_stop, visitor, None, api_visibility="private", concurrency_limit=None,
                       **RAW)
    return gate_mode, gate_window


def build_train_tab(api: Endpoints, visitor: gr.State, model_info: gr.Markdown, gate_fields: list,
                    run_minutes: float) -> list:
    """The Train tab and its events. Returns the outputs a page load refreshes (status, charts, table, timer)."""
    with gr.Tab("Train", id="train"):
        with gr.Row():
            corpus = gr.Radio(list(CORPORA), value="pydoc", label="Corpus")
            upload = gr.File(file_types=[".txt"], elem_id="upload",
                             label=f"Your .txt (UTF-8, ≤ {UPLOAD_MAX_BYTES // 2**20} MB)")
            upload.data_model = AnyUpload
        with gr.Row():
            preset = gr.Dropdown(list(PRESETS), value="small", label="Model size (preset)",
                                 info="tiny: seconds, small: minutes, base: hours on a CPU")
            steps = gr.Number(1000, precision=0, label=f"Steps (1 to {TRAIN_MAX_STEPS:,})")
            compress_prob = gr.Slider(0, 1, value=0.5, step=0.05, label="compress_prob",
                                      info="0 to 1; a typed value outside is set to the nearest end")
            multitask = gr.Checkbox(False, label="Multi-task (also read compressed streams directly)")
        gr.Markdown(f"One run at a time for everyone using this app, at most {run_minutes:g} minutes; "
                    "only you can stop, use, save or download your run, and it ends when you close the page.")
        with gr.Row():
            start_btn = gr.Button("Start", variant="primary", elem_id="train-start")
            stop_btn = gr.Button("Stop", variant="stop", elem_id="train-stop")
            use_btn = gr.Button("Use trained model in Generate", elem_id="use-trained")
            shipped_btn = gr.Button("Back to the shipped model", elem_id="use-shipped")
            save_btn = gr.Button("Save model")
            csv_btn = gr.Button("Download metrics CSV")
            refresh_btn = gr.Button("Refresh", size="sm")
        train_message = gr.Markdown(label="Message", elem_id="train-message")
        train_status = gr.Markdown(IDLE, label="Training status", elem_id="train-status")
        with gr.Row():
            loss_plot = gr.Plot(label="Loss", show_label=False, elem_id="loss-plot")
            acc_plot = gr.Plot(label="Accuracy", show_label=False, elem_id="acc-plot")
            ratio_plot = gr.Plot(label="Compression ratio", show_label=False, elem_id="ratio-plot")
        with gr.Row():
            kcs_plot = gr.Plot(label="Validation telemetry", show_label=False, elem_id="kcs-plot")
        metrics = gr.Dataframe(plots.live_metrics_table(plots.metrics_frame([])), max_height=300,
                               label="Metrics (newest first; “Download metrics CSV” has every column)")
        files = gr.File(label="Downloads (metrics CSV, saved model)", file_count="multiple")
        timer = gr.Timer(1.0, active=False)

    upload.upload(lambda: "uploaded .txt", None, corpus, api_visibility="private")  # an upload means: train on it
    train_outputs = [train_status, loss_plot, acc_plot, ratio_plot, metrics, kcs_plot]
    refresh_btn.click(api.train_status, visitor, train_outputs, api_name="train_status", concurrency_limit=4)
    timer.tick(api.train_refresh, visitor, [*train_outputs, timer], show_progress="hidden",
               api_visibility="private", concurrency_limit=4)
    start_btn.click(api.train_start, [corpus, upload, preset, steps, compress_prob, multitask, visitor],
                    train_message, api_name="train_start", **RAW) \
        .then(api.train_refresh, visitor, [*train_outputs, timer], show_progress="hidden", api_visibility="private")
    stop_btn.click(api.train_stop, visitor, train_message, api_name="train_stop")
    # The gate's fields follow the visitor's model: its window sizes, or off when it has no floors.
    use_btn.click(api.use_trained, visitor, [train_message, model_info, visitor], api_name="use_trained") \
        .then(api.gate_controls, visitor, gate_fields, api_visibility="private")
    shipped_btn.click(api.use_shipped, visitor, [train_message, model_info, visitor], api_name="use_shipped") \
        .then(api.gate_controls, visitor, gate_fields, api_visibility="private")
    save_btn.click(api.save_model, visitor, [files, train_message], api_name="save_model")
    csv_btn.click(api.export_csv, visitor, [files, train_message], api_name="export_csv")
    return [*train_outputs, timer]


def build_telemetry_tab(api: Endpoints, visitor: gr.State) -> None:
    """The Telemetry tab and its events."""
    with gr.Tab("Telemetry", id="telemetry"):
        gr.Markdown("\n".join(f"- **{k}** — {v}" for k, v in plots.TELEMETRY_EXPLAINED.items()))
        with gr.Row():
            tel_source = gr.Radio(list(telemetry_tab.TELEMETRY_SOURCES), value="last generation", label="Run on")
            tel_view = gr.Radio(list(telemetry_tab.TELEMETRY_VIEWS), value="decompressed bits", label="Model reads",
                                info="decompressed: through the codec, K/C on the original bits; "
                                     "compressed stream: the stream itself, K/C on the stream")
        tel_text = gr.Textbox("Hello, world!", label=f"Text (≤ {telemetry_tab.TEXT_MAX_CHARS:,} characters)", lines=2)
        tel_btn = gr.Button("Compute telemetry", variant="primary", elem_id="telemetry-btn")
        tel_summary = gr.Markdown(label="Summary")
        tel_status = gr.Markdown(label="Telemetry status", elem_id="tel-status")
        tel_table = gr.Dataframe(plots.telemetry_table({}), label="K, C, S")
        prob_plot = gr.Plot(label="Per-position probability and entropy", show_label=False)
        with gr.Row():
            layer = gr.Number(0, precision=0, minimum=0, label="Layer", info="from 0; clamped to the model's layers")
            head = gr.Number(0, precision=0, minimum=0, label="Head", info="from 0; clamped to the model's heads")
        heat_plot = gr.Plot(label="Attention", show_label=False, elem_id="heatmap")
        attention = gr.State(None)

    tel_btn.click(api.telemetry, [tel_source, tel_text, tel_view, layer, head, visitor],
                  [tel_summary, tel_table, prob_plot, heat_plot, tel_status, attention], api_name="telemetry",
                  concurrency_limit=4, **RAW)
    gr.on([layer.change, head.change], telemetry_tab.heatmap, [attention, layer, head], heat_plot, show_progress="hidden",
          api_visibility="private", **RAW)


def build_codec_tab(api: Endpoints, visitor: gr.State) -> None:
    """The Codec tab and its events."""
    with gr.Tab("Codec", id="codec"):
        with gr.Row():
            with gr.Column():
                codec_mode = gr.Radio(list(codec_tab.CODEC_MODES), value="text", label="Input is")
                codec_in = gr.Textbox("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb", lines=4, label=(
                    f"Input (text ≤ {codec_tab.CODEC_MAX_CHARS:,} characters, bits ≤ {codec_tab.CODEC_MAX_BITS:,})"))
                with gr.Row():
                    method = gr.Dropdown(list(METHODS), value="auto", label="Method")
                    parity = gr.Checkbox(True, label="Parity bit per byte (9-bit frames)")
                compress_btn = gr.Button("Compress", variant="primary")
            with gr.Column():
                stream = gr.Textbox(lines=6, label="Compressed stream (bits) — edit it and press Decompress",
                                    elem_classes="bits")
                decompress_btn = gr.Button("Decompress")
                codec_ratio = gr.Number(label="Compression ratio", precision=3, visible=False)
                codec_status = gr.Markdown(label="Codec status")
                codec_bits = gr.Textbox(lines=4, label="Decompressed bits", elem_classes="bits")
                codec_text = gr.Textbox(lines=2, label="Decompressed text")
        gr.Markdown(f"**The model as a compressor**: its next-bit probabilities drive a range coder "
                    f"(text ≤ {codec_tab.NEURAL_MAX_CHARS:,} characters; decoding runs about 500 bytes a second, "
                    f"2 to 4 times that from 512 bytes on, where the text is coded in parallel lanes).")
        neural_btn = gr.Button("Compress the text with the model", elem_id="neural-btn")
        neural_status = gr.Markdown(label="Neural codec status", elem_id="neural-status")
        neural_table = gr.Dataframe(plots.bits_per_byte_table({}, 0), label="Bits per byte on this text")
        gr.Markdown(f"**Files**: compress a file (any bytes, ≤ {codec_tab.FILE_MAX_BYTES // 2**20} MB) or, without "
                    f"one, the text above into a `{codec_tab.BLM_SUFFIX}` file, with whichever is smallest of cm (online "
                    "context mixing: models that learn from the file as it is coded), the model mixed in with them "
                    f"(neural+cm) or alone (neural; both for files up to {codec_tab.NEURAL_FILE_MAX_BYTES // 1024} KB, "
                    "as the model decodes sequentially), lzma, bz2, zlib or stored; decompress a "
                    f"`{codec_tab.BLM_SUFFIX}` file back to the original (one the model coded needs the same model). "
                    "Larger files: `python -m bitlm.cli.compress`.")
        with gr.Row():
            with gr.Column():
                codec_file = gr.File(label=f"File to compress (≤ {codec_tab.FILE_MAX_BYTES // 2**20} MB)",
                                     elem_id="codec-file")
                codec_file.data_model = AnyUpload
                file_compress_btn = gr.Button("Compress the file (or the text)", variant="primary",
                                              elem_id="file-compress-btn")
                blm_out = gr.File(label=f"Compressed file ({codec_tab.BLM_SUFFIX})", interactive=False,
                                  elem_id="blm-out")
            with gr.Column():
                blm_in = gr.File(label=f"{codec_tab.BLM_SUFFIX} file to decompress", elem_id="blm-in")
                blm_in.data_model = AnyUpload
                file_decompress_btn = gr.Button("Decompress the file", elem_id="file-decompress-btn")
                restored = gr.File(label="Decompressed file", interactive=False, elem_id="restored")
        file_status = gr.Markdown(label="File codec status", elem_id="file-status")
        file_table = gr.Dataframe(plots.file_codec_table({}, 0, ""), label="Every method on these bytes (header included)",
                                  elem_id="file-table")

    compress_btn.click(codec_tab.compress, [codec_in, codec_mode, method, parity],
                       [stream, codec_text, codec_ratio, codec_status], api_name="compress",
                       concurrency_limit=4, **RAW)
    decompress_btn.click(codec_tab.decompress, [stream, parity],
                         [codec_bits, codec_text, codec_ratio, codec_status], api_name="decompress",
                         concurrency_limit=4, **RAW)
    for button in (compress_btn, decompress_btn):       # the ratio appears with the first result (no 0 before)
        button.click(lambda: gr.Number(visible=True), None, codec_ratio, api_visibility="private")
    neural_btn.click(api.neural_compress, [codec_in, visitor], [neural_table, neural_status],
                     api_name="neural_compress", concurrency_limit=2, **RAW)
    file_compress_btn.click(api.compress_file, [codec_file, codec_in, visitor], [blm_out, file_table, file_status],
                            api_name="compress_file", concurrency_limit=2, **RAW)
    file_decompress_btn.click(api.decompress_file, [blm_in, visitor], [restored, file_status],
                              api_name="decompress_file", concurrency_limit=2, **RAW)
    # the methods table speaks of the last file compressed: a decompression (or its error) clears it
    file_decompress_btn.click(lambda: plots.file_codec_table({}, 0, ""), None, file_table, api_visibility="private")


def build_demo(model_dir: str | Path = MODEL_DIR, fallback_preset: str = "small", run_root: str | Path = "runs",
               run_minutes: float = RUN_MINUTES, draft_corpus: str | None = DRAFT_CORPUS,
               generate_workers: int = 0) -> gr.Blocks:
    """The app. Takes: the shipped model's folder, the `PRESETS` name of the untrained fallback used when that
    folder holds no loadable model, the folder training runs are written under, the wall-time cap of a
    training run in minutes, the shipped model's training corpus (for speculative generation; None or
    "none": without), and how many processes generate (`bitlm.app.workers`; 0: each request on its own
    thread). Returns: the `gr.Blocks`."""
    draft_corpus = None if draft_corpus in (None, "none") else draft_corpus
    api = Endpoints(load_app_model(model_dir, fallback_preset, draft_corpus),
                    SharedTrainer(run_root, time_limit_s=60 * run_minutes),
                    GenerateWorkers(generate_workers) if generate_workers else None)

    with gr.Blocks(title="BitLM") as blocks:
        visitor = gr.State(Visitor(), delete_callback=api.forget)  # each session gets its own copy
        gr.Markdown(INTRO)
        model_info = gr.Markdown(api.shipped.describe(), label="Model", elem_id="model-info")
        gate_fields = list(build_generate_tab(api, visitor))
        train_refreshed = build_train_tab(api, visitor, model_info, gate_fields, run_minutes)
        build_telemetry_tab(api, visitor)
        build_codec_tab(api, visitor)

        # A page opened later shows the visitor's model and their run, not the start-up state; a page closed
        # ends its visitor's run and removes their run folder.
        blocks.load(api.model_line, visitor, model_info, api_visibility="private")
        blocks.load(api.gate_controls, visitor, gate_fields, api_visibility="private")
        blocks.load(api.train_refresh, visitor, train_refreshed, show_progress="hidden",
                    api_visibility="private")
        blocks.unload(api.end_session)
    return blocks


def serve() -> None:
    """`python app.py`: one torch intra-op thread for the whole process, so each request (and the trainer)
    runs its torch work on the thread that serves it, and a busy neighbour costs a request its share of a
    core, not the slowdown two-thread torch suffers beside other work; generations run in
    GENERATE_WORKERS processes (one per core), since two on threads of one process take turns on the GIL
    (measured: docs/app.md)."""
    torch.set_num_threads(1)
    build_demo(generate_workers=GENERATE_WORKERS).launch(**LAUNCH_KWARGS)


if __name__ == "__main__":
    serve()
