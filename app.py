"""BitLM's Gradio app (local demo and Hugging Face Space): Generate, Train, Telemetry and Codec tabs.

This file only lays out the UI and wires events; the handlers live in `bitlm.demo` and the figures in
`bitlm.plots`. Run `python app.py`; GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose the address.
"""
from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr

from bitlm import demo, plots
from bitlm.codec import METHODS
from bitlm.train import PRESETS

LAUNCH_KWARGS = dict(
    theme=gr.themes.Soft(),
    css=".bits textarea { font-family: ui-monospace, monospace; font-size: 12px; }",
    max_file_size=demo.UPLOAD_MAX_BYTES,
)

INTRO = """# BitLM — a language model that reads and writes bits
Text becomes UTF-8 bytes, each byte 8 data bits plus an even-parity bit. Bit streams compress losslessly,
and the model can read them through the codec (**Enable Compression**) or, trained multi-task, directly."""


def build_demo(model_dir: str | Path = "assets", fallback_preset: str = "small", run_root: str | Path = "runs") -> gr.Blocks:
    """The app. Takes: the shipped model's folder, the `PRESETS` name of the untrained fallback used when that
    folder holds no loadable model, and the folder training runs are written under. Returns: the `gr.Blocks`."""
    slot = demo.load_app_model(model_dir, fallback_preset)
    session = demo.TrainingSession(run_root)

    with gr.Blocks(title="BitLM") as blocks:
        gr.Markdown(INTRO)
        model_info = gr.Markdown(slot.describe(), elem_id="model-info")
        last = gr.State(None)

        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column():
                    mode = gr.Radio(list(demo.PROMPT_MODES), value="text", label="Prompt mode")
                    prompt = gr.Textbox("To be, or not to be", lines=4, label="Prompt",
                                        info=f"Text up to {demo.PROMPT_MAX_CHARS:,} characters, or up to "
                                             f"{demo.PROMPT_MAX_BITS:,} bits (0/1, spaces allowed)")
                    with gr.Row():
                        n_bytes = gr.Slider(1, demo.GEN_MAX_BYTES, value=48, step=1, label="Bytes to generate",
                                            info=f"at most {demo.GEN_MAX_BYTES:,}")
                        temperature = gr.Slider(0, 2.0, value=0.8, step=0.05, label="Temperature", info="0 = greedy")
                        seed = gr.Number(0, precision=0, label="Seed", info="empty = random")
                    compress = gr.Checkbox(True, label="Enable Compression", elem_id="enable-compression",
                                           info="compress the prompt's bits before the model and decompress its output")
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                with gr.Column():
                    out_text = gr.Textbox(label="Output text", lines=5, elem_id="out-text")
                    with gr.Row():
                        in_ratio = gr.Number(label="Input compression ratio", precision=3, elem_id="in-ratio")
                        out_ratio = gr.Number(label="Output compression ratio", precision=3, elem_id="out-ratio")
                    gen_status = gr.Markdown(elem_id="gen-status")
                    out_bits = gr.Textbox(label="Output bits (one group per byte frame)", lines=6,
                                          elem_classes="bits")

        with gr.Tab("Train", id="train"):
            with gr.Row():
                corpus = gr.Radio(list(demo.CORPORA), value="pydoc", label="Corpus")
                upload = gr.File(file_types=[".txt"], label=f"Your .txt (UTF-8, ≤ {demo.UPLOAD_MAX_BYTES // 2**20} MB)")
            with gr.Row():
                preset = gr.Dropdown(list(PRESETS), value="small", label="Model size (preset)",
                                     info="tiny: seconds, small: minutes, base: hours on a CPU")
                steps = gr.Number(1000, precision=0, label=f"Steps (≤ {demo.TRAIN_MAX_STEPS:,})")
                compress_prob = gr.Slider(0, 1, value=0.5, step=0.05, label="compress_prob")
                multitask = gr.Checkbox(False, label="Multi-task (also read compressed streams directly)")
            with gr.Row():
                start_btn = gr.Button("Start", variant="primary", elem_id="train-start")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="train-stop")
                use_btn = gr.Button("Use trained model in Generate")
                save_btn = gr.Button("Save model")
                csv_btn = gr.Button("Download metrics CSV")
            train_status = gr.Markdown("No training run yet. Pick a corpus and press Start.", elem_id="train-status")
            with gr.Row():
                loss_plot = gr.Plot(label="Loss", show_label=False, elem_id="loss-plot")
                acc_plot = gr.Plot(label="Accuracy", show_label=False, elem_id="acc-plot")
                ratio_plot = gr.Plot(label="Compression ratio", show_label=False, elem_id="ratio-plot")
            metrics = gr.Dataframe(label="Metrics", max_height=300)
            files = gr.File(label="Downloads (metrics CSV, saved model)", file_count="multiple")
            timer = gr.Timer(1.0, active=False)

        with gr.Tab("Telemetry", id="telemetry"):
            gr.Markdown("\n".join(f"- **{k}** — {v}" for k, v in plots.TELEMETRY_EXPLAINED.items()))
            with gr.Row():
                tel_source = gr.Radio(list(demo.TELEMETRY_SOURCES), value="last generation", label="Run on")
                tel_view = gr.Radio(list(demo.TELEMETRY_VIEWS), value="decompressed bits", label="Model reads",
                                    info="decompressed: through the codec, K/C on the original bits; "
                                         "compressed stream: the stream itself, K/C on the stream")
            tel_text = gr.Textbox("Hello, world!", label=f"Text (≤ {demo.PROMPT_MAX_CHARS:,} characters)", lines=2)
            tel_btn = gr.Button("Compute telemetry", variant="primary", elem_id="telemetry-btn")
            tel_summary = gr.Markdown()
            tel_status = gr.Markdown(elem_id="tel-status")
            tel_table = gr.Dataframe(label="K, C, S")
            prob_plot = gr.Plot(label="Per-position probability and entropy", show_label=False)
            with gr.Row():
                layer = gr.Number(0, precision=0, minimum=0, label="Layer", info="from 0; clamped to the model's layers")
                head = gr.Number(0, precision=0, minimum=0, label="Head", info="from 0; clamped to the model's heads")
            heat_plot = gr.Plot(label="Attention", show_label=False, elem_id="heatmap")
            attention = gr.State(None)

        with gr.Tab("Codec", id="codec"):
            with gr.Row():
                with gr.Column():
                    codec_mode = gr.Radio(["text", "bits"], value="text", label="Input is")
                    codec_in = gr.Textbox("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb", lines=4, label=(
                        f"Input (text ≤ {demo.CODEC_MAX_CHARS:,} characters, bits ≤ {demo.CODEC_MAX_BITS:,})"))
                    with gr.Row():
                        method = gr.Dropdown(list(METHODS), value="auto", label="Method")
                        parity = gr.Checkbox(True, label="Parity bit per byte (9-bit frames)")
                    compress_btn = gr.Button("Compress", variant="primary")
                with gr.Column():
                    stream = gr.Textbox(lines=6, label="Compressed stream (bits) — edit it and press Decompress",
                                        elem_classes="bits")
                    decompress_btn = gr.Button("Decompress")
                    codec_ratio = gr.Number(label="Compression ratio", precision=3)
                    codec_status = gr.Markdown()
                    codec_bits = gr.Textbox(lines=4, label="Decompressed bits", elem_classes="bits")
                    codec_text = gr.Textbox(lines=2, label="Decompressed text")
            gr.Markdown(f"**The model as a compressor**: its next-bit probabilities drive a range coder "
                        f"(text ≤ {demo.NEURAL_MAX_CHARS:,} characters; about 500 bytes a second each way, "
                        f"several times that from 512 bytes on, where the text is coded in parallel lanes).")
            neural_btn = gr.Button("Compress the text with the model", elem_id="neural-btn")
            neural_status = gr.Markdown(elem_id="neural-status")
            neural_table = gr.Dataframe(label="Bits per byte on this text")

        generate_btn.click(functools.partial(demo.generate, slot),
                           [prompt, mode, n_bytes, temperature, seed, compress],
                           [out_text, out_bits, in_ratio, out_ratio, gen_status, last], api_name="generate")

        upload.upload(lambda: "uploaded .txt", None, corpus, api_visibility="private")  # an upload means: train on it
        train_outputs = [train_status, loss_plot, acc_plot, ratio_plot, metrics, timer]
        refresh = functools.partial(demo.refresh_training, session)
        start_btn.click(session.start, [corpus, upload, preset, steps, compress_prob, multitask], train_status,
                        api_name="train_start") \
            .then(refresh, None, train_outputs, show_progress="hidden", api_visibility="private")
        timer.tick(refresh, None, train_outputs,
                   show_progress="hidden", api_name="train_status")
        stop_btn.click(session.stop, None, train_status, api_name="train_stop")
        use_btn.click(functools.partial(session.use_trained, slot), None, train_status, api_name="use_trained") \
            .then(slot.describe, None, model_info, api_visibility="private")
        save_btn.click(session.save, None, [files, train_status], api_name="save_model")
        csv_btn.click(session.export_csv, None, [files, train_status], api_name="export_csv")

        tel_btn.click(functools.partial(demo.telemetry, slot), [tel_source, tel_text, tel_view, last, layer, head],
                      [tel_summary, tel_table, prob_plot, heat_plot, tel_status, attention], api_name="telemetry")
        gr.on([layer.change, head.change], demo.heatmap, [attention, layer, head], heat_plot, show_progress="hidden",
              api_visibility="private")

        compress_btn.click(demo.codec_compress, [codec_in, codec_mode, method, parity],
                           [stream, codec_text, codec_ratio, codec_status], api_name="compress")
        decompress_btn.click(demo.codec_decompress, [stream, parity],
                             [codec_bits, codec_text, codec_ratio, codec_status], api_name="decompress")

        def neural(text, progress=gr.Progress()):
            return demo.codec_neural(slot, text, progress)
        neural_btn.click(neural, codec_in, [neural_table, neural_status], api_name="neural_compress")

        # A page opened later shows the current model and any run in progress, not the start-up state.
        blocks.load(slot.describe, None, model_info, api_visibility="private")
        blocks.load(refresh, None, train_outputs, show_progress="hidden", api_visibility="private")
    return blocks


if __name__ == "__main__":
    build_demo().launch(**LAUNCH_KWARGS)
