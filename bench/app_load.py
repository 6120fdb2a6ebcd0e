"""App load check. Two modes.

--scaling (issue 22's thread policy): 2 000-byte generations through the API (compression on, the app's
default), p50 latency with 1, 2, 4 and 8 visitors at once, one visitor while a training run goes, and one
visitor beside a CPU-burning process (one `while True` loop: a busy neighbour, as a Space's two vCPUs always
have); for the app as it is and, with --before REV, the app at that revision, in the same run; and the
same generation in this process on one thread (`bench.sample_quality`'s code path: `model.generate` with the
app's draft), the floor a lone visitor is held to. Prints the ratios the issue asks for: neighbour / alone,
2 visitors / 1, 1 visitor / in-process.

    python -m bench.app_load --scaling --before 5db7393^      # before: torch's default threads per request

Default mode: cold start of `python app.py`, then 8 visitors (gradio_client clients, loopback) mixing
generate, telemetry (120-character texts) and codec calls, with the trainer idle and with a training run
going; and telemetry's time per call in the app as it was at an earlier revision, measured in the same run.

Prints the cold start, then one table: per phase and endpoint, requests, errors, p50 and p95 latency.
Phases: one visitor alone (the baseline), 8 visitors with the trainer idle, 8 visitors while a run trains
(started by a ninth visitor, stopped at the end), and with `--before REV` telemetry alone and 8 at once in
the app of that revision (`git archive REV`, launched the same way). Exits 1 if any request failed.

    python -m bench.app_load                          # the app as shipped (assets/ model)
    python -m bench.app_load --before f8e9949 --rounds 3
"""
import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from gradio_client import Client

from tests.conftest import free_port, serving

ROOT = Path(__file__).resolve().parent.parent

PROMPT = "To be, or not to be, that is the question"
TEL_TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds "
            "that lour'd upon our house in the deep bosom of the ocean buried.")[:120]
CODEC_TEXT = "aaaaaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbbbbbcccccccccccc, to be or not to be " * 2


def launch(port: int, cwd: Path = ROOT, timeout: float = 180) -> tuple[subprocess.Popen, float]:
    """Start `python app.py` in `cwd` on 127.0.0.1:port; return (process, seconds until GET / answered 200)."""
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"app.py in {cwd} exited with {proc.returncode}:\n{proc.stderr.read()}")
        if serving(url):
            return proc, time.perf_counter() - t0
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"app.py did not serve {url} within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


# Each call returns an error message, or None when the answer is what the endpoint promises.
def call_generate(client: Client, seed: int, n_bytes: int) -> str | None:
    # text, bits, input and output ratios, status (then the safety gate's chart and events)
    text, bits, in_ratio, out_ratio, status = client.predict(PROMPT, "text", n_bytes, 0.8, seed, True,
                                                             api_name="/generate")[:5]
    return None if bits and out_ratio is not None else f"no generation: {status}"


def call_telemetry(client: Client) -> str | None:
    status = client.predict("text below", TEL_TEXT, "decompressed bits", 0, 0, api_name="/telemetry")[4]
    return None if status.startswith("✓") else f"telemetry failed: {status}"


def call_codec(client: Client) -> str | None:
    stream, _, ratio, status = client.predict(CODEC_TEXT, "text", "auto", True, api_name="/compress")
    if not status.startswith("✓"):
        return f"compress failed: {status}"
    text = client.predict(stream, True, api_name="/decompress")[1]
    return None if text == CODEC_TEXT else "decompress did not give the text back"


def timed(call: Callable[[], str | None]) -> tuple[float, str | None]:
    t0 = time.perf_counter()
    try:
        error = call()
    except Exception as e:  # counted and reported: an error is what this check looks for
        error = f"{type(e).__name__}: {e}"
    return time.perf_counter() - t0, error


class Results:
    """Latencies and errors per (phase, endpoint), from any thread."""

    def __init__(self):
        self.rows: dict[tuple[str, str], list[tuple[float, str | None]]] = defaultdict(list)
        self.lock = threading.Lock()

    def add(self, phase: str, endpoint: str, latency: float, error: str | None) -> None:
        with self.lock:
            self.rows[(phase, endpoint)].append((latency, error))

    def errors(self) -> list[str]:
        return [e for done in self.rows.values() for _, e in done if e]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def visitors_mix(url: str, phase: str, results: Results, clients: int, rounds: int, n_bytes: int) -> None:
    """`clients` visitors at once, each doing `rounds` of generate, telemetry and codec (compress + decompress)."""
    visitors = [Client(url, verbose=False, analytics_enabled=False) for _ in range(clients)]

    def visit(c: int) -> None:
        for r in range(rounds):
            calls = [("generate", lambda: call_generate(visitors[c], 1000 * c + r, n_bytes)),
                     ("telemetry", lambda: call_telemetry(visitors[c])),
                     ("compress + decompress", lambda: call_codec(visitors[c]))]
            for i in range(len(calls)):  # each visitor starts the round at another endpoint
                endpoint, call = calls[(c + i) % len(calls)]
                results.add(phase, endpoint, *timed(call))

    threads = [threading.Thread(target=visit, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def telemetry_before_after(url: str, phase: str, results: Results, requests: int, clients: int) -> None:
    """Telemetry alone: one visitor `requests` times, then `clients` visitors once each, all at once."""
    one = Client(url, verbose=False, analytics_enabled=False)
    timed(lambda: call_telemetry(one))  # warm-up
    for _ in range(requests):
        results.add(f"{phase}, 1 visitor", "telemetry", *timed(lambda: call_telemetry(one)))
    many = [Client(url, verbose=False, analytics_enabled=False) for _ in range(clients)]
    threads = [threading.Thread(target=lambda c=c: results.add(f"{phase}, {clients} at once", "telemetry",
                                                               *timed(lambda: call_telemetry(c)))) for c in many]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def burn() -> subprocess.Popen:
    """A busy neighbour: another process spinning one core until it is killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def generations(url: str, phase: str, results: Results, visitors: int, rounds: int, n_bytes: int) -> None:
    """`visitors` visitors at once, each generating `rounds` times `n_bytes` bytes (seeds differ)."""
    clients = [Client(url, verbose=False, analytics_enabled=False) for _ in range(visitors)]

    def visit(c: int) -> None:
        for r in range(rounds):
            results.add(phase, f"generate {n_bytes} B", *timed(lambda: call_generate(clients[c], 100 * c + r, n_bytes)))

    threads = [threading.Thread(target=visit, args=(c,)) for c in range(visitors)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def scaling(url: str, label: str, results: Results, n_bytes: int, rounds: int, train_preset: str) -> None:
    """The --scaling phases on the app at `url`, named `label: …`."""
    warm = Client(url, verbose=False, analytics_enabled=False)
    timed(lambda: call_generate(warm, 0, n_bytes))  # first-call costs are not latency
    for visitors in (1, 2, 4, 8):
        generations(url, f"{label}: {visitors} visitor{'s' * (visitors > 1)}", results, visitors,
                    rounds if visitors == 1 else 1, n_bytes)
    trainer = Client(url, verbose=False, analytics_enabled=False)
    status = trainer.predict("pydoc", None, train_preset, 20_000, 0.5, False, api_name="/train_start")
    if not status.startswith("✓"):
        raise SystemExit(f"training did not start in {label}: {status}")
    time.sleep(5)  # past the run's start-up
    generations(url, f"{label}: 1 visitor, training", results, 1, rounds, n_bytes)
    trainer.predict(api_name="/train_stop")
    time.sleep(3)
    neighbour = burn()
    try:
        time.sleep(1)
        generations(url, f"{label}: 1 visitor, busy neighbour", results, 1, rounds, n_bytes)
    finally:
        neighbour.kill()


def in_process(n_bytes: int, rounds: int) -> float:
    """p50 seconds of the app's generation (shipped model, its draft, compression's codec aside) in this
    process on one thread: `bench.sample_quality`'s measurement."""
    from bitlm.app.visitors import load_app_model
    from bitlm.bits.frames import frame_bits, text_to_bits
    torch.set_num_threads(1)
    app_model = load_app_model(ROOT / "assets", draft_corpus="shakespeare")
    model, parity = app_model.model, app_model.model.config.parity
    times = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(text_to_bits(PROMPT, parity=parity), n_bytes * frame_bits(parity), temperature=0.8,
                           seed=r, draft=app_model.draft)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])   # the first pays for warm-up


def launched(rev: str | None):
    """(process, url, folder to remove) of `python app.py` as it is, or at git revision `rev`."""
    folder = None
    cwd = ROOT
    if rev:
        folder = cwd = Path(tempfile.mkdtemp(prefix="bitlm-before-"))
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    port = free_port()
    proc, _ = launch(port, cwd=cwd)
    return proc, f"http://127.0.0.1:{port}/", folder


def print_table(results: Results) -> None:
    print(f"| {'phase':<44} | {'endpoint':<22} | requests | errors | p50 s | p95 s |")
    print(f"|{'-' * 46}|{'-' * 24}|---------:|-------:|------:|------:|")
    for (phase, endpoint), done in results.rows.items():
        lat = [x for x, _ in done]
        print(f"| {phase:<44} | {endpoint:<22} | {len(lat):>8} | {sum(e is not None for _, e in done):>6} | "
              f"{statistics.median(lat):5.2f} | {pct(lat, 0.95):5.2f} |")


def p50(results: Results, phase: str) -> float:
    return statistics.median(x for (p, _), done in results.rows.items() if p == phase for x, _ in done)


def main_scaling(args) -> None:
    results = Results()
    labels = ([f"before ({args.before})"] if args.before else []) + ["now"]
    for label in labels:
        proc, url, folder = launched(args.before if label != "now" else None)
        try:
            scaling(url, label, results, args.bytes, args.rounds, args.train_preset)
        finally:
            stop(proc)
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
            for leftover in (ROOT / "runs").glob("app-*"):
                shutil.rmtree(leftover, ignore_errors=True)
    alone = in_process(args.bytes, args.rounds)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"generation: {args.bytes} bytes per request, temperature 0.8, compression on; rounds {args.rounds} "
          f"(1 for 2+ visitors: each visitor once); training: {args.train_preset} preset on pydoc")
    print(f"in this process, one thread (bench.sample_quality's path, with the draft): p50 {alone:.2f} s "
          f"({args.bytes / alone:.0f} B/s)")
    print()
    print_table(results)
    print()
    for label in labels:
        one = p50(results, f"{label}: 1 visitor")
        print(f"{label}: busy neighbour / alone {p50(results, f'{label}: 1 visitor, busy neighbour') / one:.2f}× "
              f"(target ≤ 1.5); 2 visitors / 1 {p50(results, f'{label}: 2 visitors') / one:.2f}× (≤ 1.3); "
              f"training / alone {p50(results, f'{label}: 1 visitor, training') / one:.2f}×; "
              f"1 visitor / in-process {one / alone:.2f}× (≤ 1.2)")
    errors = results.errors()
    print(f"errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors[:10]))
    sys.exit(1 if errors else 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of generate + telemetry + codec per visitor")
    ap.add_argument("--bytes", type=int, default=16, help="bytes generated per request")
    ap.add_argument("--train-preset", default="small", help="preset of the run trained during the load")
    ap.add_argument("--before", metavar="REV", help="also time telemetry (with --scaling: everything) in the app "
                                                    "at this git revision")
    ap.add_argument("--scaling", action="store_true", help="the generation phases of issue 22 (see above); "
                                                           "--bytes defaults to 2000, --rounds to 3")
    args = ap.parse_args()
    if args.scaling:
        args.bytes = 2000 if args.bytes == 16 else args.bytes
        args.rounds = 3 if args.rounds == 5 else args.rounds
        return main_scaling(args)
    results = Results()

    if args.before:
        proc, old_url, folder = launched(args.before)
        try:
            telemetry_before_after(old_url, f"before ({args.before})", results, args.rounds, args.clients)
        finally:
            stop(proc)
            shutil.rmtree(folder, ignore_errors=True)

    port = free_port()
    proc, cold_start = launch(port)
    url = f"http://127.0.0.1:{port}/"
    train_line = ""
    try:
        telemetry_before_after(url, "now", results, args.rounds, args.clients)
        control = Client(url, verbose=False, analytics_enabled=False)
        timed(lambda: call_generate(control, 0, args.bytes))  # warm-up: first-call costs are not latency
        for r in range(args.rounds):
            for endpoint, call in (("generate", lambda: call_generate(control, r, args.bytes)),
                                   ("telemetry", lambda: call_telemetry(control)),
                                   ("compress + decompress", lambda: call_codec(control))):
                results.add("1 visitor, trainer idle", endpoint, *timed(call))
        visitors_mix(url, f"{args.clients} visitors, trainer idle", results, args.clients, args.rounds, args.bytes)

        trainer = Client(url, verbose=False, analytics_enabled=False)
        status = trainer.predict("pydoc", None, args.train_preset, 20_000, 0.5, False, api_name="/train_start")
        if not status.startswith("✓"):
            raise SystemExit(f"training did not start: {status}")
        time.sleep(5)  # past the run's start-up: the load meets a run that is training
        visitors_mix(url, f"{args.clients} visitors, training running", results, args.clients, args.rounds, args.bytes)
        train_line = trainer.predict(api_name="/train_status")[0]
        trainer.predict(api_name="/train_stop")
    finally:
        stop(proc)  # the app removes its own run folders when it starts again; the bench's go now
        for leftover in (ROOT / "runs").glob("app-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"cold start: `python app.py` served the page after {cold_start:.2f} s")
    print(f"generation: {args.bytes} bytes per request, compression on; telemetry: {len(TEL_TEXT)} characters; "
          f"codec: compress and decompress {len(CODEC_TEXT)} characters; training: {args.train_preset} preset "
          f"({train_line})")
    print()
    print_table(results)
    errors = results.errors()
    print()
    print(f"errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors[:10]))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
