"""The context mixer (`bitlm.compress.cm`) and the container's version 2: the compiled coder and the
plain-Python one write the same bytes, every single damaged header byte of every method reads as
damage, the tie-break is the first method in order, memory is what the docstring says, and cm is never
worse than the header over zlib on the inputs people have."""
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from bitlm.bits.codec import CodecError
from bitlm.compress import cm
from bitlm.compress import container as nc
from bitlm.compress.header import pack_header, read_header
from tests.exact_helpers import fitted_tiny, input_set, one_thread  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parent.parent
INPUTS = input_set()
SMALL = {"text": INPUTS["shakespeare"][:300], "random": INPUTS["random"][:120], "utf-8": INPUTS["invalid utf-8"][:90]}


@pytest.fixture(scope="module")
def fitted():
    return fitted_tiny()


def _plain_python_streams(model_dir: Path) -> dict:
    """cm and neural+cm streams of SMALL written by a process with numba's compiler turned off."""
    code = ("import json, sys; from bitlm.compress import container as nc; from bitlm.model.transformer import "
            "BitTransformerLM; from tests.test_cm import SMALL; m = BitTransformerLM.from_pretrained(sys.argv[1]); "
            "print(json.dumps({k + '/' + meth: nc.compress_file(d, m, methods=(meth,)).blob.hex() "
            "for k, d in SMALL.items() for meth in ('cm', 'neural+cm')}))")
    done = subprocess.run([sys.executable, "-c", code, str(model_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "NUMBA_DISABLE_JIT": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_compiled_and_plain_python_write_the_same_bytes(fitted, tmp_path):
    fitted.save_pretrained(tmp_path)
    plain = _plain_python_streams(tmp_path)
    for key, hexblob in plain.items():
        name, method = key.split("/")
        assert nc.compress_file(SMALL[name], fitted, methods=(method,)).blob.hex() == hexblob, key
    assert cm._code.__class__.__name__ == "CPUDispatcher"            # this process did compile it


@pytest.mark.parametrize("method", nc.METHODS)
def test_every_damaged_header_byte_reads_as_damage(fitted, method):
    """Each header byte of a file of each method, changed to each of its 255 other values: always a
    CodecError that says the file is damaged (or, for the magic byte, that it is not a BitLM file only
    when no version-2 header can be recognised behind it)."""
    blob = nc.compress_file(INPUTS["shakespeare"][:200], fitted, methods=(method,)).blob
    size = read_header(blob).size
    assert size <= nc.MAX_HEADER_BYTES
    for i in range(size):
        for x in range(1, 256):
            bad = bytearray(blob)
            bad[i] ^= x
            with pytest.raises(CodecError, match="damaged") as e:
                nc.decompress_file(bytes(bad), fitted)
            assert "another model" not in str(e.value) and "loaded model" not in str(e.value), (i, x, e.value)


def test_a_version_1_file_still_decodes_and_its_faults_keep_their_names(fitted):
    data = INPUTS["pydoc"][:500]
    v1 = pack_header(nc.ZLIB, len(data), zlib.crc32(data), version=1) + zlib.compress(data, 9)[2:-4]
    assert read_header(v1).version == 1 and nc.decompress_file(v1, fitted) == data
    with pytest.raises(CodecError, match="over the limit"):
        nc.decompress_file(v1, fitted, max_bytes=100)


def test_tie_break_is_the_first_method_in_order():
    result = nc.compress_file(b"", None)
    assert result.sizes["stored"] == result.sizes["cm"] and result.method == "stored"
    assert nc.METHODS == ("stored", "zlib", "bz2", "lzma", "neural", "cm", "neural+cm")


def test_cm_on_every_input_kind_and_never_worse_than_the_header_over_the_classics():
    for name, data in INPUTS.items():
        result = nc.compress_file(data, None)
        assert nc.decompress_file(result.blob, None) == data
        assert len(result.blob) <= nc.MAX_HEADER_BYTES + min(len(data), len(zlib.compress(data, 9))), name
        forced = nc.compress_file(data, None, methods=("cm",)).blob
        assert nc.decompress_file(forced, None) == data, name
    text = INPUTS["shakespeare"]
    assert nc.compress_file(text, None).method == "cm"                      # it beats the classics on text


def test_memory_is_fixed_by_the_length_and_capped():
    """The state's arrays add up to the docstring's sum, and the cap holds at the largest length."""
    for n, lanes in ((1000, 1), (50_000, 3), (300_000, 64)):
        L = -(-n // lanes)
        st = cm.CMState(n, lanes, L, np.full(lanes, L))
        tb = cm.table_bits(n)
        want = (4 << (tb + cm.SHARED_BITS)) + (4 << (tb - 1)) + lanes * L + 8 * lanes * cm.LANE_FIELDS
        small = st.w1.nbytes + st.w2.nbytes + st.w3.nbytes + st.w4.nbytes + st.wf.nbytes + st.apm1.nbytes \
            + st.apm2.nbytes + st.indirect.nbytes + st.history_maps.nbytes + st.match_sm.nbytes + st.params.nbytes \
            + st.lens.nbytes + st.coder.nbytes
        assert st.nbytes == want + small
        assert small < 10 << 20
    assert cm.table_bits(nc.MAX_LENGTH) == cm.TABLE_BITS_MAX == 20            # 64 MiB of context slots at most


def test_damaged_payload_never_hangs_and_is_named(fitted):
    data = INPUTS["shakespeare"][:2000]
    blob = nc.compress_file(data, None, methods=("cm",)).blob
    h = read_header(blob)
    for cut in (h.size + 1, len(blob) - 1):
        with pytest.raises(CodecError, match="damaged|truncated"):
            nc.decompress_file(blob[:cut], None)
    bad = bytearray(blob)
    bad[h.size + 40] ^= 0x10
    with pytest.raises(CodecError, match="damaged"):
        nc.decompress_file(bytes(bad), None)


def test_a_payload_that_runs_out_stops_early():
    """A 20-byte cm payload behind a valid header claiming 10 MB stops as soon as the payload is spent,
    long before 10 MB are decoded (it would take seconds)."""
    data = b"abc" * 4000
    blob = nc.compress_file(data, None, methods=("cm",)).blob
    h = read_header(blob)
    forged = pack_header(nc.CM, 10_000_000, h.crc) + blob[h.size:h.size + 20]
    with pytest.raises(CodecError, match="ran out at byte (\\d+)") as e:
        nc.decompress_file(forged, None)
    assert int(e.value.args[0].split("ran out at byte ")[1].split()[0]) <= 1 << 16    # the first call of the kernel


def test_the_model_runs_on_a_long_input_only_if_it_pays_on_a_sample(fitted):
    """From JUDGE_FROM bytes on, with cm among the methods, random bytes (where a model cannot help) skip
    the model's whole pass and say what the sample showed; asked for the model alone, it still runs."""
    data = bytes(np.random.default_rng(1).integers(0, 256, nc.JUDGE_FROM, dtype=np.uint8))
    result = nc.compress_file(data, fitted, methods=("cm", "neural+cm"))
    assert "neural+cm" not in result.sizes and "from its middle" in result.neural_skipped, result.neural_skipped
    assert nc.decompress_file(result.blob, fitted) == data
    small = data[:nc.JUDGE_FROM - 1]
    assert "neural+cm" in nc.compress_file(small, fitted, methods=("cm", "neural+cm")).sizes   # below: no judge
