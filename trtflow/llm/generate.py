"""The KV-cache generation loop over an ONNX Runtime session of the decoder graph.

Prefill runs the whole prompt once (past length 0); each decode step feeds one token
and the previous step's present KV, kept as ORT values (no copy through numpy).
Greedy decoding: the next token is the argmax of the last position's logits.

With the fused graph (`trtflow.llm.fused_graph`: GroupQueryAttention) `generate` keeps
one KV buffer per layer sized for the prompt plus the new tokens and binds it as both
the past input and the present output (I/O binding): the attention op writes the new
token's K/V in place instead of copying the whole cache into a new present tensor
every step. `step` and `logits_stepwise` keep the plain past -> present form.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trtflow.errors import DataError
from trtflow.llm.export import DecoderShape, input_names


@dataclass
class Generation:
    tokens: np.ndarray  # [B, new] generated ids
    prefill_seconds: float
    decode_seconds: float
    prompt_tokens: int  # per sequence
    step_seconds: list[float] = field(default_factory=list)


def check_context(prompt_tokens: int, new_tokens: int, context: int, what: str = "prompt"
                  ) -> None:
    if prompt_tokens + new_tokens > context:
        raise DataError(f"{what}: {prompt_tokens} tokens + {new_tokens} new tokens exceed the "
                        f"model's context of {context} tokens; expected at most "
                        f"{context - new_tokens} prompt tokens")


class OrtDecoder:
    """Prefill, decode steps and greedy generation over one ORT session."""

    def __init__(self, session: Any, shape: DecoderShape) -> None:
        self.session = session
        self.shape = shape
        self.past_names = input_names(shape)[3:]
        self.outputs = [o.name for o in session.get_outputs()]
        # the fused graph derives positions from the cache length and has no position_ids;
        # its attention op can update a KV buffer in place (see module doc)
        self.takes_positions = "position_ids" in {i.name for i in session.get_inputs()}
        self.shared_cache = not self.takes_positions
        self.dtype = np.float32

    def empty_past(self, batch: int) -> list[Any]:
        from onnxruntime import OrtValue

        s = self.shape
        zero = np.zeros((batch, s.kv_heads, 0, s.head_dim), self.dtype)
        return [OrtValue.ortvalue_from_numpy(zero) for _ in self.past_names]

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list[Any]
             ) -> tuple[Any, list[Any]]:
        """One forward: logits (an OrtValue [B, S, V]) and the present KV."""
        from onnxruntime import OrtValue

        feeds = {"input_ids": OrtValue.ortvalue_from_numpy(ids.astype(np.int64)),
                 "attention_mask": OrtValue.ortvalue_from_numpy(mask.astype(np.int64))}
        if self.takes_positions:
            feeds["position_ids"] = OrtValue.ortvalue_from_numpy(positions.astype(np.int64))
        feeds.update(zip(self.past_names, past, strict=True))
        out = self.session.run_with_ort_values(self.outputs, feeds)
        return out[0], list(out[1:])

    def logits_stepwise(self, input_ids: np.ndarray, split: int) -> np.ndarray:
        """Logits of every position: a prefill of `split` tokens, then one token a step."""
        batch, seq = input_ids.shape
        logits, past = self.step(input_ids[:, :split], np.ones((batch, split)),
                                 np.tile(np.arange(split), (batch, 1)), self.empty_past(batch))
        chunks = [logits.numpy()]
        for t in range(split, seq):
            logits, past = self.step(input_ids[:, t:t + 1], np.ones((batch, t + 1)),
                                     np.full((batch, 1), t), past)
            chunks.append(logits.numpy())
        return np.concatenate(chunks, axis=1)

    def cache_stepper(self, batch: int, capacity: int) -> Any:
        """A step function (ids, mask, positions) -> logits OrtValue over KV buffers of
        `capacity` positions: bound in place for the fused graph, else past -> present."""
        if not self.shared_cache:
            past = self.empty_past(batch)

            def plain(ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> Any:
                nonlocal past
                logits, past = self.step(ids, mask, positions, past)
                return logits
            return plain
        from onnxruntime import OrtValue

        s = self.shape
        buffers = [OrtValue.ortvalue_from_numpy(
            np.zeros((batch, s.kv_heads, capacity, s.head_dim), self.dtype))
            for _ in self.past_names]
        binding = self.session.io_binding()
        logits: dict[tuple[int, ...], Any] = {}  # an output buffer per shape (prefill, decode)
        for name, buffer in zip(self.past_names, buffers, strict=True):
            binding.bind_ortvalue_input(name, buffer)
            binding.bind_ortvalue_output(name.replace("past_", "present_"), buffer)

        def shared(ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> Any:
            if mask.shape[1] > capacity:
                raise DataError(f"{mask.shape[1]} tokens exceed the KV buffer of {capacity}")
            ids64 = np.ascontiguousarray(ids, np.int64)  # alive until the run is done
            mask64 = np.ascontiguousarray(mask, np.int64)
            binding.bind_cpu_input("input_ids", ids64)
            binding.bind_cpu_input("attention_mask", mask64)
            out_shape = (*ids64.shape, s.vocab)
            if out_shape not in logits:
                logits[out_shape] = OrtValue.ortvalue_from_numpy(np.empty(out_shape, self.dtype))
            binding.bind_ortvalue_output("logits", logits[out_shape])
            self.session.run_with_iobinding(binding)
            return logits[out_shape]
        return shared

    def generate(self, prompt_ids: np.ndarray, new_tokens: int,
                 prompt_mask: np.ndarray | None = None, eos: int | None = None) -> Generation:
        """Greedy generation for a left-padded batch [B, S]; stops early only when every
        sequence has produced `eos` (None: always `new_tokens`)."""
        batch, seq = prompt_ids.shape
        check_context(seq, new_tokens, self.shape.context)
        mask = np.ones((batch, seq), np.int64) if prompt_mask is None else \
            prompt_mask.astype(np.int64)
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        run = self.cache_stepper(batch, seq + new_tokens)
        start = time.perf_counter()
        logits = run(prompt_ids, mask, positions)
        token = logits.numpy()[:, -1].argmax(-1)
        prefill = time.perf_counter() - start
        out = [token]
        done = np.zeros(batch, bool) if eos is None else token == eos
        steps: list[float] = []
        next_pos = positions[:, -1:] + 1
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            if eos is not None and done.all():
                break
            t0 = time.perf_counter()
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
            logits = run(token[:, None], mask, next_pos)
            token = logits.numpy()[:, -1].argmax(-1)
            out.append(token)
            next_pos = next_pos + 1
            if eos is not None:
                done |= token == eos
            steps.append(time.perf_counter() - t0)
        return Generation(tokens=np.stack(out, axis=1), prefill_seconds=prefill,
                          decode_seconds=time.perf_counter() - start, prompt_tokens=seq,
                          step_seconds=steps)


def session_for(path: Any, threads: int = 2, spinning: bool = False) -> Any:
    """An ONNX Runtime CPU session with every graph optimization, `threads` intra-op.

    `spinning` off: idle intra-op threads sleep instead of busy-waiting between ops. A
    decode step runs ~300 small ops; on a host whose cores are shared (this one: 2
    cores, load 5-10 from other jobs) spinning threads took the cores from each other
    and decode ran 1.3-1.8x slower with it on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
