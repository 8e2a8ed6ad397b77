"""Published weights by name: downloaded from a loopback HTTP server started here (the
published checkpoint from ../shared, or damaged copies of it), checked, cached, reused
without the network, and the errors a user sees offline."""

import contextlib
import http.server
import io
import os
import threading

import pytest
import torch
from cli_run import one_line_error, run_cli
from shared_data import CROWD, WEIGHTS

from retinaface_ext.models import RetinaFace, read_state_dict, weights

pytestmark = pytest.mark.skipif(not WEIGHTS.exists(), reason="../shared missing")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty weights folder of this test's own ($RETINAFACE_EXT_HOME), no mirror."""
    monkeypatch.setenv("RETINAFACE_EXT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(weights.MIRROR_VARIABLE, raising=False)
    return tmp_path / "home" / "weights"


@contextlib.contextmanager
def serving(files, max_requests=8):
    """An HTTP server on 127.0.0.1 (a free port) serving ``files`` {name: bytes or
    (bytes, announced length)}; it answers at most ``max_requests`` requests and is stopped
    on exit. Yields (base address, the paths requested)."""
    requested = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            name = self.path.lstrip("/")
            if name not in files or len(requested) > max_requests:
                self.send_error(404)
                return
            body, length = files[name] if isinstance(files[name], tuple) else (files[name], len(files[name]))
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with running(Handler) as base:
        yield base, requested


@contextlib.contextmanager
def running(handler):
    """An HTTP server with ``handler`` on 127.0.0.1 (a free port), stopped on exit; yields
    its base address."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def saved(state_dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def closed_port_address() -> str:
    with contextlib.closing(__import__("socket").socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/mobilenet0.25_Final.pth"


def test_the_pinned_digest_is_the_published_checkpoints():
    assert weights.tensors_digest(read_state_dict(WEIGHTS)) == weights.PUBLISHED["mobilenet0.25"].digest


def test_the_digest_sees_names_shapes_dtypes_and_values_but_not_the_pickling():
    state = read_state_dict(WEIGHTS)
    digest = weights.tensors_digest(state)
    pickled = saved({"state_dict": {"module." + k: v.clone() for k, v in state.items()}})
    repickled = read_state_dict(torch.load(io.BytesIO(pickled), weights_only=True))
    assert weights.tensors_digest(repickled) == digest
    assert weights.tensors_digest({**state, "x.num_batches_tracked": torch.tensor(3)}) == digest
    key = next(k for k, v in state.items() if v.is_floating_point())
    changed = dict(state)
    changed[key] = state[key].clone()
    changed[key].view(-1)[0] = torch.nextafter(changed[key].view(-1)[0], torch.tensor(1e9))
    assert weights.tensors_digest(changed) != digest
    assert weights.tensors_digest({**state, key: state[key].double()}) != digest
    assert weights.tensors_digest({**state, key: state[key].reshape(-1)}) != digest
    renamed = {("x" + k if k == key else k): v for k, v in state.items()}
    assert weights.tensors_digest(renamed) != digest


def test_a_download_is_checked_cached_and_then_used_without_the_network(home, capsys):
    with serving({"m.pth": WEIGHTS.read_bytes()}) as (base, requested):
        path = weights.download("mobilenet0.25", urls=[f"{base}/m.pth"], progress=True)
    assert requested == ["/m.pth"]
    assert path == str(home / "mobilenet0.25_Final.pth")
    assert open(path, "rb").read() == WEIGHTS.read_bytes()
    assert os.listdir(home) == ["mobilenet0.25_Final.pth"]  # no temporary file left
    assert "mobilenet0.25" in capsys.readouterr().err  # the progress bar
    # The server is gone: everything below reads the cache.
    assert weights.download("mobilenet0.25", urls=[closed_port_address()]) == path
    model = RetinaFace.from_checkpoint("mobilenet0.25")
    expected = read_state_dict(WEIGHTS)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items() if k in expected)
    from retinaface_ext import Detector

    assert len(Detector("mobilenet0.25", device="cpu").detect(str(CROWD)).above(0.6)) >= 20


def test_a_repickled_copy_with_the_same_tensors_is_accepted(home):
    copy = saved({"state_dict": {"module." + k: v for k, v in read_state_dict(WEIGHTS).items()}})
    with serving({"copy.pth": copy}) as (base, _):
        path = weights.download("mobilenet0.25", urls=[f"{base}/copy.pth"], progress=False)
    assert open(path, "rb").read() == copy
    weights.load_published("mobilenet0.25")  # checks again


@pytest.mark.parametrize("damage", ["other values", "truncated", "not a checkpoint", "too large", "http error"])
def test_a_damaged_download_is_refused_and_nothing_is_left(home, damage):
    good = WEIGHTS.read_bytes()
    state = read_state_dict(WEIGHTS)
    key = next(k for k, v in state.items() if v.is_floating_point())
    files = {
        "other values": {"m.pth": saved({**state, key: state[key] + 1e-3})},
        "truncated": {"m.pth": (good[: len(good) // 2], len(good))},
        "not a checkpoint": {"m.pth": b"<html>rate limited</html>"},
        "too large": {"m.pth": (b"", 1 << 40)},
        "http error": {},
    }[damage]
    with serving(files) as (base, _):
        with pytest.raises(weights.WeightsUnavailable) as error:
            weights.download("mobilenet0.25", urls=[f"{base}/m.pth"], progress=False)
    assert f"{base}/m.pth (" in str(error.value)
    assert str(home / "mobilenet0.25_Final.pth") in str(error.value)
    assert not home.exists() or os.listdir(home) == []


def test_the_next_address_is_tried_after_a_bad_one(home):
    with serving({"good.pth": WEIGHTS.read_bytes(), "bad.pth": b"junk"}) as (base, requested):
        weights.download("mobilenet0.25", urls=[f"{base}/missing.pth", f"{base}/bad.pth", f"{base}/good.pth"])
    assert requested == ["/missing.pth", "/bad.pth", "/good.pth"]
    assert os.listdir(home) == ["mobilenet0.25_Final.pth"]


def test_offline_the_error_names_every_address_and_where_a_file_is_picked_up(home, monkeypatch):
    address = closed_port_address()
    monkeypatch.setenv(weights.MIRROR_VARIABLE, address.rsplit("/", 1)[0])
    with pytest.raises(weights.WeightsUnavailable) as error:
        RetinaFace.from_checkpoint("mobilenet0.25")
    text = str(error.value)
    assert address in text and "by hand" in text and text.endswith(str(home / "mobilenet0.25_Final.pth"))
    assert not home.exists() or os.listdir(home) == []


def test_a_wrong_file_in_the_cache_is_named_and_not_replaced(home):
    home.mkdir(parents=True, exist_ok=True)
    state = read_state_dict(WEIGHTS)
    key = next(k for k, v in state.items() if v.is_floating_point())
    wrong = saved({**state, key: state[key] * 2})
    (home / "mobilenet0.25_Final.pth").write_bytes(wrong)
    with pytest.raises(ValueError, match="does not hold the published mobilenet0.25 weights.*delete it"):
        RetinaFace.from_checkpoint("mobilenet0.25")
    assert (home / "mobilenet0.25_Final.pth").read_bytes() == wrong


def test_an_unpinned_entry_is_checked_for_its_backbone_and_warns(home):
    """Without a digest the download checks the backbone; the names and shapes are checked
    by the strict load of every model (naming the file)."""
    state = RetinaFace("resnet50").state_dict()
    state["ClassHead.0.conv1x1.bias"] = torch.zeros(5)  # a shape no RetinaFace has
    with serving({"r.pth": saved(state), "m.pth": WEIGHTS.read_bytes()}) as (base, _):
        with pytest.raises(weights.WeightsUnavailable, match="holds mobilenet0.25 weights, not the published resnet50"):
            weights.download("resnet50", urls=[f"{base}/m.pth"], progress=False)
        with pytest.warns(UserWarning, match="no pinned digest"):
            path = weights.download("resnet50", urls=[f"{base}/r.pth"], progress=False)
    assert path == str(home / "Resnet50_Final.pth")
    with pytest.raises(ValueError, match=f"{path} does not fit RetinaFace: 1 shape mismatches: ClassHead.0.conv1x1"):
        RetinaFace.from_checkpoint(path)


def test_a_file_of_that_name_wins_over_the_published_name(tmp_path, monkeypatch, home):
    monkeypatch.chdir(tmp_path)
    state = read_state_dict(WEIGHTS)
    torch.save(state, tmp_path / "mobilenet0.25")
    assert not weights.is_published_name("mobilenet0.25")
    RetinaFace.from_checkpoint("mobilenet0.25")  # read from the file: nothing fetched
    assert not home.exists()


def test_the_command_detects_without_weights_on_a_warm_cache(home, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(weights.MIRROR_VARIABLE, closed_port_address().rsplit("/", 1)[0])
    code, _, err = run_cli(capsys, "detect", CROWD)
    one_line_error(code, err, "could not be downloaded", str(home / "mobilenet0.25_Final.pth"))
    home.mkdir(parents=True, exist_ok=True)
    (home / "mobilenet0.25_Final.pth").write_bytes(WEIGHTS.read_bytes())
    code, out, err = run_cli(capsys, "detect", CROWD)
    assert code == 0 and "26 faces" in out, err


def test_the_weights_command_lists_fetches_and_verifies(home, capsys, monkeypatch, tmp_path):
    code, out, _ = run_cli(capsys, "weights")
    assert code == 0 and f"weights folder: {home}" in out and "not cached" in out
    assert weights.PUBLISHED["resnet50"].urls[0] in out
    with serving({"mobilenet0.25_Final.pth": WEIGHTS.read_bytes()}) as (base, _):
        monkeypatch.setenv(weights.MIRROR_VARIABLE, base)
        code, out, err = run_cli(capsys, "weights", "fetch", "mobilenet0.25")
    assert code == 0 and out.strip() == str(home / "mobilenet0.25_Final.pth"), err
    code, out, _ = run_cli(capsys, "weights", "list")
    assert f"cached: {home / 'mobilenet0.25_Final.pth'}" in out
    code, out, _ = run_cli(capsys, "weights", "verify", "mobilenet0.25")
    assert code == 0 and "the published mobilenet0.25 weights" in out
    other = tmp_path / "other.pth"
    torch.save({k: v + 1 for k, v in read_state_dict(WEIGHTS).items()}, other)
    code, out, _ = run_cli(capsys, "weights", "verify", other)
    assert code == 1 and "not one of the pinned published weights" in out
    code, _, err = run_cli(capsys, "weights", "fetch", "mobilenet")
    one_line_error(code, err, "no published weights are called 'mobilenet'")
    code, _, err = run_cli(capsys, "weights", "verify", "resnet50")
    one_line_error(code, err, "not in the weights folder")


def test_a_mirror_that_trickles_bytes_is_given_up_on_by_a_deadline(home, monkeypatch):
    """A byte every 5 s kept `weights fetch` going forever: each read waited less than
    its 30 s."""
    import time

    stop = threading.Event()

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            for _ in range(200):  # at most 20 s, whatever the client does
                if stop.wait(0.1):
                    return
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return

        def log_message(self, *args):
            pass

    with running(Trickle) as base:
        url = f"{base}/m.pth"
        try:
            started = time.monotonic()
            with pytest.raises(weights.WeightsUnavailable, match="the download took more than 1.5 s"):
                weights.download("mobilenet0.25", urls=[url], progress=False, seconds=1.5)
            assert time.monotonic() - started < 10
            monkeypatch.setenv("RETINAFACE_EXT_DOWNLOAD_SECONDS", "1")
            with pytest.raises(weights.WeightsUnavailable, match="more than 1 s"):
                weights.download("mobilenet0.25", urls=[url], progress=False)
        finally:
            stop.set()  # the handler's loop ends before the server is shut down
    assert not home.exists() or os.listdir(home) == []
    monkeypatch.setenv("RETINAFACE_EXT_DOWNLOAD_SECONDS", "soon")
    with pytest.raises(ValueError, match="RETINAFACE_EXT_DOWNLOAD_SECONDS='soon' is not a number"):
        weights.download("mobilenet0.25", urls=[url], progress=False)
