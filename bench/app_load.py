"""App load check: cold start of `python app.py`, then 8 concurrent gradio_client clients x 10 generation
requests (compression on) on loopback, with a training run going for the first half of them.

Prints the cold start (process start until the page serves), then p50 / p95 / max latency, throughput and
errors for one client alone (the baseline, measured first in the same run) and for the concurrent clients
while training runs and after it stops, with each p50 as a ratio to the baseline. Requests to one endpoint
are served one at a time (gradio's default queue), so concurrent latency is queueing: expect about
`clients` x the baseline. Exits 1 if any request failed.

    python bench/app_load.py                       # the app as shipped (assets/ model, or the small fallback)
    python bench/app_load.py --bytes 8 --train-preset tiny
"""
import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from gradio_client import Client  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import free_port, serving  # noqa: E402


def launch(port: int, timeout: float = 120) -> tuple[subprocess.Popen, float]:
    """Start `python app.py` on 127.0.0.1:port; return (process, seconds until GET / answered 200)."""
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited with {proc.returncode}:\n{proc.stderr.read()}")
        if serving(url):
            return proc, time.perf_counter() - t0
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"app.py did not serve {url} within {timeout:.0f} s")


def generate(client: Client, n_bytes: int, seed: int) -> tuple[float, str | None]:
    """One generation request; returns (latency s, error or None)."""
    t0 = time.perf_counter()
    try:
        text, bits, in_ratio, out_ratio, status = client.predict(
            "To be, or not to be, that is the question", "text", n_bytes, 0.8, seed, True, api_name="/generate")
    except Exception as e:  # counted and reported: an error is what this check looks for
        return time.perf_counter() - t0, f"{type(e).__name__}: {e}"
    latency = time.perf_counter() - t0
    if not bits or in_ratio is None or out_ratio is None:
        return latency, f"no generation: {status}"
    return latency, None


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=10, help="per client (and for the single-client baseline)")
    ap.add_argument("--bytes", type=int, default=16, help="bytes generated per request")
    ap.add_argument("--train-preset", default="small", help="preset of the run trained during the load")
    args = ap.parse_args()

    port = free_port()
    proc, cold_start = launch(port)
    url = f"http://127.0.0.1:{port}/"
    run_dir = None
    try:
        control = Client(url, verbose=False, analytics_enabled=False)
        generate(control, args.bytes, 0)  # warm-up: first-call costs are not latency

        t0 = time.perf_counter()
        baseline = [generate(control, args.bytes, i) for i in range(args.requests)]
        baseline_wall = time.perf_counter() - t0

        status = control.predict("pydoc", None, args.train_preset, 20_000, 0.5, False, api_name="/train_start")
        if not status.startswith("✓"):
            raise SystemExit(f"training did not start: {status}")
        # The run folder the status names is this bench's litter: removed at the end.
        run_dir = ROOT / re.search(r"go to `([^`]+)`", status).group(1)
        results: list[tuple[bool, float, str | None]] = []  # (training was running, latency, error)
        lock = threading.Lock()
        half = args.clients * args.requests // 2
        training = threading.Event()
        training.set()
        clients = [Client(url, verbose=False, analytics_enabled=False) for _ in range(args.clients)]

        def worker(c: int) -> None:
            for i in range(args.requests):
                during = training.is_set()
                latency, error = generate(clients[c], args.bytes, 1000 * c + i)
                with lock:
                    results.append((during, latency, error))
                    if len(results) == half and training.is_set():
                        control.predict(api_name="/train_stop")
                        training.clear()

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        load_wall = time.perf_counter() - t0
        train_line = control.predict(api_name="/train_status")[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)

    phases = [
        ("1 client, idle (baseline)", baseline, baseline_wall),
        (f"{args.clients} clients, training running", [(lat, e) for d, lat, e in results if d], None),
        (f"{args.clients} clients, after training stopped", [(lat, e) for d, lat, e in results if not d], None),
        (f"{args.clients} clients, all", [(lat, e) for _, lat, e in results], load_wall),
    ]
    p50_base = statistics.median(lat for lat, _ in baseline)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"app threads: torch default ({torch.get_num_threads()})")
    print(f"cold start: `python app.py` served the page after {cold_start:.2f} s")
    print(f"generation: {args.bytes} bytes per request, compression on; training: {args.train_preset} preset, "
          f"stopped after {half} requests ({train_line})")
    print()
    print(f"| {'phase':<34} | requests | errors | p50 s | p95 s | max s | req/s | p50 / baseline |")
    print(f"|{'-' * 36}|---------:|-------:|------:|------:|------:|------:|---------------:|")
    for name, done, wall in phases:
        lat = [x for x, _ in done]
        rate = f"{len(lat) / wall:.2f}" if wall else "-"
        if not lat:
            print(f"| {name:<34} | {0:>8} | {0:>6} | {'-':>5} | {'-':>5} | {'-':>5} | {rate:>5} | {'-':>14} |")
            continue
        print(f"| {name:<34} | {len(lat):>8} | {sum(e is not None for _, e in done):>6} | {statistics.median(lat):5.2f} | "
              f"{pct(lat, 0.95):5.2f} | {max(lat):5.2f} | {rate:>5} | {statistics.median(lat) / p50_base:13.2f}x |")
    errors = [e for _, done, _ in phases[:1] + phases[3:] for _, e in done if e]
    print()
    print(f"errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors[:10]))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
