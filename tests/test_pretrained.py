"""``eca_jax.create_model(name, pretrained=True)`` against stand-ins on 127.0.0.1: a Hugging Face hub
stand-in (huggingface_hub pointed at it with HF_ENDPOINT) serving a randomised timm-layout
ecaresnet26t safetensors file, and a plain HTTP server serving a randomised torchvision-layout
resnet18 .pth. No internet; the cache is a tmp dir (ECA_JAX_CACHE), never the user's."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import threading
import time

import jax
import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import save as save_safetensors

import eca_jax
import torch_reference
from eca_jax import predict, pretrained
from eca_jax.convert.verify import relative_error
from eca_jax.pretrained import IntegrityError, Manifest, NotCachedError, download

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_ENTRY = pretrained.DEFAULT.find("ecaresnet26t")       # repo timm/ecaresnet26t.ra2_in1k
HUB_PATH = f"/{HUB_ENTRY.repo_id}/resolve/main/{HUB_ENTRY.filename}"
TV_PATH = "/models/resnet18-test.pth"


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` {path: bytes}; ``modes`` {path: "corrupt" | "truncate" | "kill" | "kill_once"};
    hub paths also answer HEAD with the hub's headers (commit, linked etag = SHA-256, linked size)."""
    files: dict = {}
    modes: dict = {}
    log: list = []

    def log_message(self, *args):   # keep pytest's output clean
        pass

    def _headers(self, body: bytes, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        if "/resolve/" in self.path:
            digest = hashlib.sha256(self.files[self.path]).hexdigest()
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{digest}"')
            self.send_header("X-Linked-Etag", f'"{digest}"')
            self.send_header("X-Linked-Size", str(len(self.files[self.path])))
        self.end_headers()

    def do_HEAD(self):
        self.log.append(("HEAD", self.path))
        if self.path not in self.files:
            self.send_error(404)
            return
        self._headers(b"", len(self.files[self.path]))

    def do_GET(self):
        self.log.append(("GET", self.path))
        if self.path not in self.files:
            self.send_error(404)
            return
        body, mode = self.files[self.path], self.modes.get(self.path)
        if mode == "corrupt":
            body = body[:1000] + bytes([body[1000] ^ 1]) + body[1001:]
        if mode == "truncate":
            body = body[: len(body) // 2]
        if mode in ("kill", "kill_once"):
            if mode == "kill_once":
                self.modes.pop(self.path)
            self._headers(body, len(body))
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self._headers(body, len(body))
        self.wfile.write(body)


@pytest.fixture(scope="module")
def torch_models():
    """The PyTorch reference models whose weights the stand-ins serve (random weights and BN stats)."""
    return {"ecaresnet26t": torch_reference.build("ecaresnet26t", seed=0),
            "resnet18": torch_reference.build("resnet18", seed=1)}


@pytest.fixture(scope="module")
def server(torch_models):
    hub_sd = {k: v.contiguous() for k, v in torch_models["ecaresnet26t"].state_dict().items()
              if not k.endswith("num_batches_tracked")}   # timm's published files have none
    buffer = io.BytesIO()
    torch.save(torch_models["resnet18"].state_dict(), buffer)
    Handler.files = {HUB_PATH: save_safetensors(hub_sd), TV_PATH: buffer.getvalue()}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    """A fresh cache, the hub endpoint on the stand-in, online, no token; the request log emptied."""
    monkeypatch.setenv("ECA_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", server)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    Handler.log.clear()
    Handler.modes.clear()
    return tmp_path / "cache"


@pytest.fixture
def tv_manifest(server):
    """The manifest with resnet18's torchvision entry pointed at the stand-in and the test file's hash."""
    entry = pretrained.DEFAULT.find("resnet18")
    digest = hashlib.sha256(Handler.files[TV_PATH]).hexdigest()
    return Manifest([dataclasses.replace(entry, url=server + TV_PATH, sha256_prefix=digest[:8])])


def _hub_requests() -> list:
    """The requests for weight files (huggingface_hub may also ask its endpoint for /api/... metadata of its own)."""
    return [r for r in Handler.log if not r[1].startswith("/api/")]


def _files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _assert_logits_match(model, torch_model, size=64):
    x = torch_reference.random_images(2, size, seed=3)
    with torch.no_grad():
        expected = torch_model(x).numpy()
    with jax.default_matmul_precision("highest"):
        got = np.asarray(model(x.permute(0, 2, 3, 1).numpy(), train=False))
    assert relative_error(got, expected) < 1e-4


# Measured 2026-11-30 on 2 busy cores: about 30 s (first call: download, convert, --verify's logits
# check on the same file, cache; then a cached call).
@pytest.mark.slow
def test_hub_weights_download_verify_convert_cache(env):
    start = time.perf_counter()
    eca_jax.create_model("ecaresnet26t", pretrained=True, progress=False)
    first = time.perf_counter() - start
    assert _hub_requests() == [("HEAD", HUB_PATH), ("GET", HUB_PATH)]
    start = time.perf_counter()
    loaded = pretrained.load_spec("pretrained://ecaresnet26t.ra2_in1k", progress=False)
    print(f"first call {first:.1f} s, cached call {time.perf_counter() - start:.1f} s")
    assert len(_hub_requests()) == 2, "the cached call made a request"
    meta = loaded.metadata
    assert meta["verify"]["rel_err"] < 1e-4 and meta["pretrained"]["name"] == "ecaresnet26t.ra2_in1k"
    assert meta["source_sha256"] == hashlib.sha256(Handler.files[HUB_PATH]).hexdigest()
    assert loaded.signature.input_settings["image_size"] == 320
    assert loaded.signature.input_settings["eval_interpolation"] == "bicubic"
    assert not [f for f in _files(env) if "incomplete" in f or ".tmp-" in f]


# Measured 2026-11-30: 10 s on 2 idle cores (download, convert, cache, one flax forward).
@pytest.mark.slow
def test_url_weights_download_check_convert_cache(env, torch_models, tv_manifest):
    """Logits equal those of the independent PyTorch model whose file was served (rel < 1e-4)."""
    model = eca_jax.create_model("resnet18", pretrained=True, manifest=tv_manifest, progress=False, verify=False)
    _assert_logits_match(model, torch_models["resnet18"])
    assert Handler.log == [("GET", TV_PATH)]
    eca_jax.create_model("resnet18", pretrained="tv_in1k", manifest=tv_manifest, progress=False)
    assert Handler.log == [("GET", TV_PATH)], "the cached call made a request"
    assert "converted/resnet18.tv_in1k/eca_jax_convert.json" in _files(env)


# Measured 2026-11-30: about 60 s on 2 cores shared with other jobs (load 13): convert, an NNX
# build and predict's jit at 64 px; about a quarter of that alone.
@pytest.mark.slow
def test_nnx_and_predict_take_the_published_weights(env, tv_manifest, tmp_path, monkeypatch, capsys):
    """The NNX twin holds the converted weights; ``predict --checkpoint pretrained://resnet18`` (the
    manifest given by $ECA_JAX_PRETRAINED_MANIFEST) reads them from the cache without a request."""
    loaded = pretrained.load("resnet18", manifest=tv_manifest, progress=False)
    from flax import nnx
    import eca_jax.nnx as ennx
    twin = ennx.create_model("resnet18", rngs=nnx.Rngs(0), pretrained=True, manifest=tv_manifest, progress=False)
    np.testing.assert_array_equal(ennx.linen_variables(twin)["params"]["fc"]["kernel"],
                                  loaded.variables["params"]["fc"]["kernel"])
    np.testing.assert_array_equal(ennx.linen_variables(twin)["batch_stats"]["bn1"]["var"],
                                  loaded.variables["batch_stats"]["bn1"]["var"])

    manifest_file = tmp_path / "manifest.json"
    manifest_file.write_text(json.dumps([dataclasses.asdict(e) for e in tv_manifest.entries[:1]]))
    monkeypatch.setenv("ECA_JAX_PRETRAINED_MANIFEST", str(manifest_file))
    image = tmp_path / "image.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(image)
    labels = tmp_path / "labels.txt"   # (ImageNet's names would load TensorFlow)
    labels.write_text("\n".join(f"class {i}" for i in range(1000)))
    capsys.readouterr()
    assert predict.main([str(image), "--checkpoint", "pretrained://resnet18", "--json", "--top", "1",
                         "--labels", str(labels), "--image-size", "64"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "resnet18" and out["image_size"] == 64
    assert Handler.log == [("GET", TV_PATH)], "a cached call made a request"


def _assert_clean(cache, name):
    """Nothing of ``name`` but quarantined files: no converted dir, no temp or partial files."""
    files = _files(cache) if os.path.isdir(cache) else []
    assert not [f for f in files if f.startswith(f"converted/{name}")]
    assert not [f for f in files if "incomplete" in f or ".tmp" in f or f.startswith("downloads/")]
    assert not [f for f in files if "/blobs/" in f], files


@pytest.mark.parametrize("mode", ["corrupt", "truncate", "kill"])
def test_bad_url_download_leaves_a_clean_cache(env, tv_manifest, mode):
    Handler.modes[TV_PATH] = mode
    with pytest.raises(IntegrityError, match="resnet18") as e:
        pretrained.load("resnet18", manifest=tv_manifest, progress=False)
    # A body cut short is caught by the client (interrupted, nothing kept) or by the hash (quarantined).
    assert "interrupted" in str(e.value) or "not the published" in str(e.value)
    _assert_clean(env, "resnet18")
    quarantined = [f for f in _files(env) if f.startswith("quarantine/")]
    assert len(quarantined) == (0 if "interrupted" in str(e.value) else 1)


@pytest.mark.parametrize("mode", ["corrupt", "truncate"])
def test_bad_hub_download_leaves_a_clean_cache(env, mode):
    Handler.modes[HUB_PATH] = mode
    with pytest.raises(IntegrityError, match="model.safetensors"):
        pretrained.load("ecaresnet26t", progress=False)
    _assert_clean(env, "ecaresnet26t")


def test_killed_hub_download_restarts_cleanly(env):
    """huggingface_hub retries a dropped body (after 1 s): the file arrives whole and checked."""
    Handler.modes[HUB_PATH] = "kill_once"
    path, digest = download.fetch(HUB_ENTRY, progress=False)
    assert digest == hashlib.sha256(Handler.files[HUB_PATH]).hexdigest() == download.sha256(path)
    assert [m for m, _ in _hub_requests()].count("GET") == 2


def test_offline_with_nothing_cached_says_what_to_do(env, monkeypatch, tv_manifest):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, kwargs, file in [("ecaresnet26t", {}, "model.safetensors"),
                               ("resnet18", {"manifest": tv_manifest}, "resnet18-f37072fd.pth")]:
        with pytest.raises(NotCachedError) as e:
            eca_jax.create_model(name, pretrained=True, progress=False, **kwargs)
        message = str(e.value)
        assert "\n" not in message and file in message and str(env) in message and "ECA_JAX_CACHE" in message
        assert "Offline" in message
    assert _hub_requests() == []


def test_release_file_message_and_wrong_architecture(env, tv_manifest):
    with pytest.raises(NotCachedError) as e:
        eca_jax.create_model("eca_resnet50", pretrained=True)
    message = str(e.value)
    for part in ("eca_resnet50_k3557.pth.tar", "https://pan.baidu.com/s/1pcn6ZfZUAYKycZ6FMr4F2Q", "7qo9",
                 os.path.join(str(env), "downloads", "eca_resnet50_k3557.pth.tar"), "pretrained='/path/to/"):
        assert part in message
    wrong = env.parent / "eca_resnet18_k3577.pth.tar"   # torchvision's resnet18 under a release name
    wrong.write_bytes(Handler.files[TV_PATH])
    with pytest.raises(IntegrityError, match="holds resnet18"):
        eca_jax.create_model("eca_resnet18", pretrained=str(wrong), progress=False)
    assert wrong.exists(), "a user's own file is never moved"
    assert not os.path.isdir(env / "converted")


def test_spec_survives_the_trainers_path_handling():
    from eca_jax._paths import absolute_path
    assert absolute_path("pretrained://resnet50.tv2_in1k") == "pretrained://resnet50.tv2_in1k"
    assert pretrained.is_spec("pretrained://resnet50.tv2_in1k") and not pretrained.is_spec("ckpt/resnet50")


def test_bad_arguments_are_clear(env):
    with pytest.raises(pretrained.PretrainedError, match="its tags: ra2_in1k"):
        eca_jax.create_model("ecaresnet26t", pretrained="nope_in1k")
    with pytest.raises(pretrained.PretrainedError, match="models with weights"):
        pretrained.load("resnet8_cifar")
    with pytest.raises(FileNotFoundError, match="no such file"):
        eca_jax.create_model("resnet18", pretrained="/nonexistent/resnet18.pth")
