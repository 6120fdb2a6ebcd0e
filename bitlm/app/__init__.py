"""The Gradio app's work, testable without a browser: what a visitor types, checked (`inputs`), who owns what
(`visitors`: each visitor's model, the one shared trainer), one module per tab (`generate_tab`, `telemetry_tab`,
`codec_tab`), figures and tables (`plots`), and the public endpoints acting for the calling visitor
(`endpoints`). `app.py` at the repository root lays out the UI and wires these.
"""
