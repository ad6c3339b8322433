"""The GPU path: on a CUDA device the three variants compute what they compute on the CPU,
the kNN memory finds the same neighbours, bf16-autocast training learns, generation draws
valid music, and torchrun trains on every visible GPU over NCCL.

Every test here is skipped, with the reason, where torch sees no CUDA GPU (CI, this project's
machines); `bash bench/gpu_check.sh` runs them where one is (README, "Testing").
Tolerances: logits and losses on the GPU in float32 (torch's default: no TF32 matmuls) within
1e-4 of the CPU's; bf16 autocast only where training uses it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_generate import SCHEME, VOCAB, completions, decodes, random_prompt
from test_generate import tiny as generation_model
from test_model import T, run, stream, tiny
from test_train import random_shards, tiny_params, trainer

from midigen.data.batching import IGNORE
from midigen.encodings.index import Grammar
from midigen.generation.contexts import KVCache
from midigen.generation.sampling import GenerateConfig, generate
from midigen.models.memory import KNNMemory
from midigen.models.transformer import token_loss

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"vanilla": "none", "xl": "xl", "xl_knn": "xl_knn"}
TOL = 1e-4  # float32 on the GPU against the CPU: different kernels, the same arithmetic
TORCHRUN_TIMEOUT_S = 300


def on_gpu(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.cuda() for t in tensors]


# ---- the model on the GPU computes what it computes on the CPU ---------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_and_loss_on_cuda_equal_the_cpus(variant):
    """Three segments, a song boundary inside the second: logits, loss and the memories the
    GPU model carries equal the CPU model's, within TOL."""
    model = tiny(memory=VARIANTS[variant])
    tokens, bar_pos = stream(3, 3 * T, seed=7)
    doc = torch.zeros_like(tokens)
    doc[1, T + 3 :] = 1
    targets = tokens.roll(-1, 1)
    targets[:, -1] = IGNORE
    with torch.no_grad():
        cpu_logits, cpu_state = run(model, tokens, bar_pos, doc)
        gpu_logits, gpu_state = run(copy.deepcopy(model).cuda(), *on_gpu(tokens, bar_pos, doc))
    assert gpu_logits.is_cuda
    torch.testing.assert_close(gpu_logits.cpu(), cpu_logits, atol=TOL, rtol=TOL)
    cpu_loss, count = token_loss(cpu_logits, targets)
    gpu_loss, gpu_count = token_loss(gpu_logits, targets.cuda())
    assert int(gpu_count) == int(count)
    assert float(gpu_loss) / int(count) == pytest.approx(float(cpu_loss) / int(count), rel=TOL)
    if variant != "vanilla":
        for a, b in zip(cpu_state.past.keys, gpu_state.past.keys, strict=True):
            torch.testing.assert_close(b.cpu(), a, atol=TOL, rtol=TOL)
    if variant == "xl_knn":
        for row in range(3):
            assert gpu_state.slots["knn"].size(row) == cpu_state.slots["knn"].size(row) > 0
            torch.testing.assert_close(
                gpu_state.slots["knn"].stored(row)[0].cpu(),
                cpu_state.slots["knn"].stored(row)[0],
                atol=TOL,
                rtol=0,
            )


# ---- the kNN memory's search ---------------------------------------------------------------


def filled_memories(device: str) -> tuple[KNNMemory, KNNMemory, torch.Tensor]:
    """The same keys in a CPU memory and in one on `device`; queries (some of another song)."""
    torch.manual_seed(0)
    heads, dim = 4, 16
    memories = [KNNMemory(3, heads, dim, 500, d) for d in ("cpu", device)]
    for row, n in enumerate((300, 7, 0)):
        keys = torch.nn.functional.normalize(torch.randn(heads, n, dim), dim=-1)
        for memory in memories:
            memory.doc[row] = 4
            if n:
                memory.add(row, keys, 2 * keys)
    return *memories, torch.randn(3, heads, 10, dim)


def assert_same_neighbours(cpu: KNNMemory, gpu: KNNMemory, queries: torch.Tensor) -> None:
    doc = torch.full((3, 10), 4)
    doc[0, 7:] = 5  # another song: nothing found for these
    cpu_ids = assert_same_search(cpu, gpu, queries, doc, k=8)
    assert (cpu_ids[0, :, 7:] == -1).all() and (cpu_ids[1, ..., 7:] == -1).all()
    assert (cpu_ids[2] == -1).all()


def assert_same_search(
    cpu: KNNMemory, gpu: KNNMemory, queries: torch.Tensor, doc: torch.Tensor, k: int
) -> torch.Tensor:
    """The same ids, scores, keys, values and hits from both memories; the CPU's ids."""
    cpu_scores, cpu_ids = cpu.lookup(queries, doc, k)
    gpu_scores, gpu_ids = gpu.lookup(queries.cuda(), doc.cuda(), k)
    assert torch.equal(gpu_ids.cpu(), cpu_ids)
    torch.testing.assert_close(gpu_scores.cpu(), cpu_scores, atol=1e-5, rtol=1e-5)
    keys, values, found = gpu.search(queries.cuda(), doc.cuda(), k)
    want_keys, want_values, want_found = cpu.search(queries, doc, k)
    assert keys.is_cuda and torch.equal(found.cpu(), want_found)
    torch.testing.assert_close(keys.cpu(), want_keys)
    torch.testing.assert_close(values.cpu(), want_values)
    return cpu_ids


def test_knn_memory_on_cuda_finds_what_the_cpus_finds():
    """Keys kept and searched on the GPU: the same neighbours, scores, keys and values as a
    memory on the CPU."""
    cpu, gpu, queries = filled_memories("cuda")
    assert gpu.stored(0)[0].is_cuda
    assert_same_neighbours(cpu, gpu, queries)


def test_knn_memory_on_cuda_wraps_and_searches_in_blocks_as_on_the_cpu(monkeypatch):
    """A ring past its limit and a search in blocks of a few slots: the GPU's memory holds
    and finds what the CPU's does."""
    monkeypatch.setattr(KNNMemory, "SCORES_PER_BLOCK", 3 * 4 * 10 * 16)
    cpu, gpu = (KNNMemory(3, 4, 16, 64, d) for d in ("cpu", "cuda"))
    torch.manual_seed(3)
    for _ in range(5):  # 100 keys per row through 64 slots
        keys = torch.nn.functional.normalize(torch.randn(3, 4, 20, 16), dim=-1)
        for memory in (cpu, gpu):
            memory.write(keys.to(memory.device), -keys.to(memory.device), torch.full((3, 20), 4))
    assert gpu.keys.is_cuda and gpu.size(0) == cpu.size(0) == 64
    ids = assert_same_search(cpu, gpu, torch.randn(3, 4, 10, 16), torch.full((3, 10), 4), k=8)
    assert (ids >= 0).all()


# ---- training under bf16 autocast ----------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Real shards made by the real stages from small random songs (as tests/test_train.py)."""
    root = tmp_path_factory.mktemp("cuda-train")
    return random_shards(root, 14, 0, val_fraction=0.25, test_fraction=0.1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_under_bf16_autocast_lowers_the_loss(shards, tmp_path, variant):
    """The real Trainer on the GPU: its forward runs in bf16, and a few steps on one segment
    give finite losses that fall."""
    run_ = trainer(shards, tmp_path, variant, tiny_params(steps=50, lr=3e-3, warmup_steps=1))
    assert run_.env.device.type == "cuda"
    segment = run_.train_batches.epoch(0)[0]
    logits, _ = run_._forward(segment, None)
    assert logits.dtype == torch.bfloat16
    losses = [run_.train_step(segment) for _ in range(10)]
    assert all(math.isfinite(loss) for loss in losses), losses
    assert losses[-1] < losses[0] - 0.1, losses
    assert run_.evaluate() > 0


# ---- generation on the GPU -----------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_generation_on_cuda_draws_valid_music(variant):
    """Sampling and beam search on the GPU: grammatical tokens that, ended by <eos> or by the
    shortest ending of an unfinished row, decode; a finite log probability. And the key/value
    cache's logits, token by token past several segments, equal the CPU's."""
    cpu_model = generation_model(VARIANTS[variant])
    model = copy.deepcopy(cpu_model).cuda()  # generation_model is cached: move a copy
    prompt = random_prompt(1, rows=6)
    for config in (
        GenerateConfig(length=60, min_length=20, top_p=0.9, seed=3),
        GenerateConfig(length=30, min_length=10, beams=3, seed=3),
    ):
        drawn = generate(model, prompt, SCHEME, config)
        assert config.min_length <= len(drawn.tokens) <= config.length
        assert math.isfinite(drawn.log_prob)
        sequence = [*prompt.tokens.tolist(), *drawn.tokens]
        Grammar(VOCAB).parse(sequence)  # raises on a grammar error
        if drawn.tokens[-1] == VOCAB.eos:
            assert decodes(sequence, VOCAB)
        else:  # the length limit may stop it inside a row
            assert any(decodes([*sequence, *end], VOCAB) for end in completions(VOCAB))

    song = random_prompt(3, rows=30)
    tokens, bars = torch.tensor(song.tokens)[None], torch.tensor(song.bar_pos)[None]
    assert tokens.shape[1] > 5 * cpu_model.config.segment_len
    with torch.no_grad():
        cpu_cache, gpu_cache = KVCache(cpu_model), KVCache(model)
        for p in range(tokens.shape[1]):
            want = cpu_cache.feed(tokens[:, p : p + 1], bars[:, p : p + 1])
            got = gpu_cache.feed(*on_gpu(tokens[:, p : p + 1], bars[:, p : p + 1]))
            torch.testing.assert_close(got.cpu(), want, atol=TOL, rtol=TOL)


# ---- torchrun on every visible GPU ---------------------------------------------------------

NCCL_ALL_REDUCE = """
import os, torch, torch.distributed as dist
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl")
x = torch.full((4,), float(dist.get_rank() + 1), device="cuda")
dist.all_reduce(x)
print(f"rank {dist.get_rank()} of {dist.get_world_size()}: {dist.get_backend()} "
      f"sum {x[0].item():.0f}", flush=True)
dist.destroy_process_group()
"""

TRAIN = """
import json, sys
from pathlib import Path
import torch.distributed as dist
sys.path.insert(0, sys.argv[5])
from test_train import trainer  # the Trainer as tests/test_train.py makes it
shards, out, variant = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
run = trainer(shards, out, variant, json.loads(sys.argv[4]))
last = run.run()
run.save_model(out / "model.pt")
backend = dist.get_backend() if dist.is_initialized() else "none"
print(json.dumps({"rank": run.env.rank, "world": run.env.world, "device": str(run.env.device),
                  "backend": backend, "loss": last["train_loss"]}), flush=True)
"""


def python_run(args: list[str], torchrun: int | None = None) -> subprocess.CompletedProcess:
    """`python ARGS`, or under `torchrun --standalone --nproc_per_node=N` (its module, so
    that it needs no `torchrun` on PATH), with this checkout's src first on the path."""
    launch = [sys.executable]
    if torchrun is not None:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    paths = [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    result = subprocess.run(
        [*launch, *args],
        capture_output=True,
        text=True,
        timeout=TORCHRUN_TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_nccl_all_reduce_on_every_visible_gpu(tmp_path):
    """torchrun, one process per visible GPU, NCCL: every rank gets the sum of all ranks'."""
    gpus = torch.cuda.device_count()
    script = tmp_path / "all_reduce.py"
    script.write_text(NCCL_ALL_REDUCE)
    lines = python_run([str(script)], torchrun=gpus).stdout.split("\n")
    reports = sorted(line for line in lines if line.startswith("rank "))
    total = gpus * (gpus + 1) // 2
    assert reports == [f"rank {r} of {gpus}: nccl sum {total}" for r in range(gpus)]


@pytest.mark.parametrize("variant", ["vanilla", "xl_knn"])
def test_torchrun_on_every_visible_gpu_trains_as_one_process(shards, tmp_path, variant):
    """`Trainer` under torchrun with one process per visible GPU (DDP over NCCL once there are
    two or more; with one GPU torchrun's single process trains alone) ends with the weights of
    a plain single-process run on the GPU: equal to 1e-3 with one GPU (the same bf16 work),
    to 1e-2 with several (each rank's bf16 rounding of its share of the rows differs)."""
    gpus = torch.cuda.device_count()
    params = tiny_params(steps=4)
    params["model"]["dropout"] = 0.0  # the two runs draw different dropout masks otherwise
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    common = [variant, json.dumps(params), str(ROOT / "tests")]
    single = python_run([str(script), str(shards), str(tmp_path / "one"), *common])
    double = python_run([str(script), str(shards), str(tmp_path / "all"), *common], gpus)
    (alone,) = [json.loads(line) for line in single.stdout.splitlines() if line.startswith("{")]
    ranks = [json.loads(line) for line in double.stdout.splitlines() if line.startswith("{")]
    assert alone["device"].startswith("cuda")
    assert sorted(r["rank"] for r in ranks) == list(range(gpus))
    for r in ranks:
        assert r["world"] == gpus and r["device"].startswith("cuda")
        assert r["backend"] == ("nccl" if gpus > 1 else "none")
        assert math.isfinite(r["loss"])
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["model"]
    every = torch.load(tmp_path / "all" / "model.pt", weights_only=True)["model"]
    tol = 1e-3 if gpus == 1 else 1e-2
    for name in one:
        torch.testing.assert_close(every[name], one[name], rtol=tol, atol=tol, msg=name)
