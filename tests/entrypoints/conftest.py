"""One real server subprocess (pcjax-tiny, small limits) shared by the module's tests."""

import dataclasses

import pytest

from experiments import serving_utils

MODEL_NAME = "tiny"
PAGE_SIZE = 4
MAX_MODEL_LEN = 256
MAX_NUM_SEQS = 4
ENGINE_KWARGS = dict(
    model="pcjax-tiny",
    page_size=PAGE_SIZE,
    max_model_len=MAX_MODEL_LEN,
    num_pages=400,
    max_num_seqs=MAX_NUM_SEQS,
    max_num_batched_tokens=64,
    attention_impl="reference",
)
SERVER_FLAGS = [
    "--model", "pcjax-tiny", "--served-model-name", MODEL_NAME, "--block-size", str(PAGE_SIZE),
    "--max-model-len", str(MAX_MODEL_LEN), "--num-pages", "400",
    "--max-num-seqs", str(MAX_NUM_SEQS), "--max-num-batched-tokens", "64",
    "--attention-impl", "reference", "--log-interval", "1",
]  # fmt: skip


@dataclasses.dataclass
class Server:
    url: str
    metrics_url: str
    proc: object
    health_codes: list
    log_path: str


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port, metrics_port = serving_utils.free_port(), serving_utils.free_port()
    log_path = str(tmp_path_factory.mktemp("server") / "server.log")
    flags = [*SERVER_FLAGS, "--metrics-port", str(metrics_port)]
    proc = serving_utils.start_pcjax_server(flags, port, log_path)
    try:
        url = f"http://127.0.0.1:{port}"
        codes = serving_utils.wait_healthy(url, proc, timeout_s=300)
        yield Server(url, f"http://127.0.0.1:{metrics_port}", proc, codes, log_path)
    finally:
        serving_utils.stop(proc)
