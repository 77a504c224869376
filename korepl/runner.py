"""The model and the key/value cache that goes with it: run new tokens, get the next token's logits.

Two runners, one interface (`run`, `crop`, `reset`, `cached_len`):

* `StaticRunner`, for GPT-2-family models (KoGPT2 and the demo model): the cache is preallocated once
  for the whole window, so a step writes one position in place instead of growing tensors by
  concatenation, and no mask is built for a one-token step.  The products and layer norms are the ops
  the model's own layers run (in whatever precision they hold: float32, half, or int8), called without
  the module wrappers; attention and GELU use faster kernels that agree to ~1e-7, and the tests check
  that float32 greedy ids still equal Hugging Face `generate`'s.
* `HubRunner`, for any other causal LM: the model's own forward with a transformers `DynamicCache`, or a
  `StaticCache` where its forward is compiled (korepl.compiled.HubStep: CUDA graphs on a GPU).

Why a step of its own: Hugging Face's forward spends part of each one-token step outside the
products (mask building, cache concatenation, dispatch); `benchmarks/` measures the difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.pytorch_utils import Conv1D


class HubRunner:
    """Any causal LM through its own forward pass: a DynamicCache, or a StaticCache when its compiled step
    (korepl.compiled.HubStep) is to serve the one-token steps once it is ready."""

    def __init__(self, model, device: torch.device, compiled=None):
        self.model, self.device = model, device
        self.compiled = compiled if getattr(compiled, "uses_static_cache", False) else None
        self.cache = self._new_cache()
        self.cached_len = 0

    def _new_cache(self):
        return DynamicCache() if self.compiled is None else self.compiled.new_cache()

    def run(self, chunk: list[int]) -> torch.Tensor:
        try:
            with torch.inference_mode():  # as the compiled step was compiled (grad mode is one of its guards)
                input_ids = torch.tensor([chunk], dtype=torch.long, device=self.device)
                if len(chunk) == 1 and self.compiled is not None and self.compiled.ready:
                    logits = self.compiled.run(self, input_ids)
                else:
                    logits = last_logits(self.model, input_ids, self.cache)
        except BaseException:
            # Ctrl+C (or any failure) inside the forward pass may leave some layers longer than others.
            self.crop(self.cached_len)
            raise
        self.cached_len += len(chunk)
        return logits.float()

    def crop(self, length: int) -> None:
        if self.compiled is not None:
            crop_static(self.cache, length)
        else:
            for layer in self.cache.layers:
                excess = layer.get_seq_length() - length
                if excess > 0:
                    layer.crop(-excess)
        self.cached_len = min(self.cached_len, length)

    def reset(self) -> None:
        if self.compiled is not None:
            self.crop(0)  # the same tensors: a CUDA graph recorded over them stays good
        else:
            self.cache = DynamicCache()
        self.cached_len = 0


def last_logits(forward, input_ids: torch.Tensor, cache) -> torch.Tensor:
    """The last position's logits [vocab] from a transformers forward (the model's, or its compiled one)."""
    return forward(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1).logits[0, -1]


def crop_static(cache, length: int) -> None:
    """A StaticCache cut back to `length` in place (its tensors keep their addresses, as CUDA graphs need): its
    layers count what they hold in a tensor each, and after Ctrl+C mid-forward some counted one chunk more."""
    with torch.inference_mode():
        for layer in cache.layers:
            if layer.is_initialized and int(layer.cumulative_length) > length:
                layer.cumulative_length.fill_(length)


@dataclass(frozen=True)
class OpPrecision:
    """Ops a path runs in another precision than its weights' because that is faster on this device (measured by
    korepl.precision: on one CPU, float16 attention took 7x and a float16 prefill's products 4x float32's time)."""

    attention: torch.dtype | None = None  # the cache and one-query attention
    prefill: torch.dtype | None = None  # products over several tokens at once, the weights cast for each


class StaticRunner:
    """GPT-2's forward pass over a cache preallocated for the whole window."""

    def __init__(self, model, device: torch.device, compiled=None, ops: OpPrecision = OpPrecision()):
        transformer, config = model.transformer, model.config
        self.device = device
        self.layers = [_Layer(block, ops.prefill) for block in transformer.h]
        self.wte, self.wpe = transformer.wte, transformer.wpe
        self.ln_f, self.lm_head = _norm(transformer.ln_f), _linear(model.lm_head)
        self.heads, self.head_dim = config.n_head, config.n_embd // config.n_head
        window = config.n_positions
        weight = transformer.wte.weight
        self.dtype = weight.dtype if weight.is_floating_point() else torch.float32  # the hidden state's
        dtype = ops.attention or self.dtype
        self.upcast = dtype != self.dtype  # queries, keys and values change precision before attention
        # torch.empty: pages are committed only as positions are written, so a short text costs little memory.
        shape = (len(self.layers), self.heads, window, self.head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.layer_keys, self.layer_values = self.keys.unbind(0), self.values.unbind(0)
        self.no_input = torch.zeros((1, 1, 1), dtype=dtype, device=device)  # baddbmm wants one even with beta=0
        self.positions = torch.arange(window, device=device)
        self.cached_len = 0
        self.compiled = compiled  # a korepl.compiled.CompiledStep of this model, used once it is ready

    @staticmethod
    def supports(model) -> bool:
        """A GPT-2 causal LM with nothing this runner leaves out (cross-attention, reordered attention)."""
        config = getattr(model, "config", None)
        return (getattr(config, "model_type", None) == "gpt2" and hasattr(model, "transformer")
                and not config.add_cross_attention and not config.reorder_and_upcast_attn)

    def run(self, chunk: list[int]) -> torch.Tensor:
        # Positions past `cached_len` may hold a half-written step after Ctrl+C: they are simply overwritten.
        with torch.inference_mode():
            if len(chunk) > 1:
                logits = self.lm_head(self.ln_f(self._prefill(chunk)[-1:]))
            elif self.compiled is not None and self.compiled.ready:
                logits = self.compiled.run(self, chunk[0])
            else:
                logits = one_token(self, chunk[0], self.cached_len, self.layer_keys, self.layer_values)
        self.cached_len += len(chunk)
        return logits[0].float()

    def _prefill(self, chunk: list[int]) -> torch.Tensor:
        """Several tokens at once, each seeing the cache and the tokens before it."""
        start, end = self.cached_len, self.cached_len + len(chunk)
        ids = torch.tensor(chunk, dtype=torch.long, device=self.device)
        hidden = self.wte(ids) + self.wpe(self.positions[start:end])  # [tokens, width]
        shape = (end - start, self.heads, self.head_dim)
        # From the start the mask is plain causal, which SDPA does without one.
        mask = None if start == 0 else self.positions[:end].unsqueeze(0) <= self.positions[start:end].unsqueeze(1)
        for layer, keys, values in zip(self.layers, self.layer_keys, self.layer_values):
            projected = layer.c_attn(layer.ln_1(hidden))
            query, key, value = (projected.to(keys.dtype) if self.upcast else projected).split(layer.width, dim=1)
            keys[:, start:end] = key.view(shape).transpose(0, 1)
            values[:, start:end] = value.view(shape).transpose(0, 1)
            # SDPA's fused CPU kernel takes only 4-D inputs (3-D falls back to a 4x slower path).
            attended = F.scaled_dot_product_attention(
                query.view(shape).transpose(0, 1)[None], keys[None, :, :end], values[None, :, :end],
                is_causal=mask is None, attn_mask=mask, scale=layer.scaling)[0].to(hidden.dtype)
            hidden = hidden + layer.attn_proj(attended.transpose(0, 1).reshape(end - start, layer.width))
            hidden = hidden + layer.mlp(hidden)
        return hidden

    def crop(self, length: int) -> None:
        self.cached_len = min(self.cached_len, length)

    def reset(self) -> None:
        self.cached_len = 0


def one_token(parts: StaticRunner, token: int, position: int, layer_keys, layer_values) -> torch.Tensor:
    """One token's logits, its keys and values written at `position`: the hot path, as few ops as possible.

    The eager step and the compiled one (korepl.compiled, where token and position are symbolic) run this same
    code; the caches are arguments so that one compiled graph serves every runner of the model.
    """
    end = position + 1
    hidden = (parts.wte.weight[token] + parts.wpe.weight[position]).view(1, -1)
    for layer, keys, values in zip(parts.layers, layer_keys, layer_values):
        projected = layer.c_attn(layer.ln_1(hidden))
        if parts.upcast:
            projected = projected.to(keys.dtype)
        query, key, value = projected.view(3, parts.heads, 1, parts.head_dim).unbind(0)
        keys[:, position:end] = key
        values[:, position:end] = value
        # One query: two batched products beat SDPA's kernel on the CPUs measured (see benchmarks/).
        scores = torch.baddbmm(parts.no_input, query, keys[:, :end].transpose(1, 2), beta=0, alpha=layer.scaling)
        attended = torch.bmm(torch.softmax(scores, dim=-1), values[:, :end])
        if parts.upcast:
            attended = attended.to(hidden.dtype)
        hidden = hidden + layer.attn_proj(attended.view(1, -1))
        hidden = hidden + layer.mlp(hidden)
    return parts.lm_head(parts.ln_f(hidden))


class _Layer:
    """One GPT-2 block's parts as plain functions: the ops its modules run, without their call overhead."""

    def __init__(self, block, prefill: torch.dtype | None = None):
        attn, mlp = block.attn, block.mlp
        self.ln_1, self.ln_2 = _norm(block.ln_1), _norm(block.ln_2)
        self.c_attn, self.attn_proj = _linear(attn.c_attn, prefill), _linear(attn.c_proj, prefill)
        self.c_fc, self.c_proj = _linear(mlp.c_fc, prefill), _linear(mlp.c_proj, prefill)
        self.act = _activation(block)
        self.width, self.scaling = attn.split_size, attn.scaling

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(self.ln_2(x))))


def _linear(module, prefill: torch.dtype | None = None):
    """A linear layer as the one op it runs, without the module call around it (the same numbers).

    `prefill`: several tokens' products run in that precision, the weights cast for each call (a float16 prefill
    in float32 where float16 matrix products are slow); one token's stay in the weights' own.

    GPT-2's Conv1D is an addmm over [in, out] weights, an nn.Linear an F.linear over [out, in]; an int8 layer is torch's dynamic-quantized linear
    op on its packed weights, called without the module wrapper, which costs a noticeable share of the step.
    """
    if isinstance(module, Conv1D):
        weight, bias = module.weight, module.bias
        if prefill is not None:
            return lambda x: torch.addmm(bias, x, weight) if x.shape[0] == 1 else \
                torch.addmm(bias.to(prefill), x.to(prefill), weight.to(prefill)).to(x.dtype)
        return lambda x: torch.addmm(bias, x, weight)
    packed = getattr(module, "_packed_params", None)
    if packed is not None and packed.dtype == torch.qint8 and (module.version or 0) >= 4:
        weights, linear_dynamic = packed._packed_params, torch.ops.quantized.linear_dynamic.default
        return lambda x: linear_dynamic(x, weights, True)  # True: reduce_range, as the module passes
    if type(module) is torch.nn.Linear:  # a Conv1D turned [out, in] where that layout is faster (precision.py)
        weight, bias = module.weight, module.bias
        if prefill is not None:
            return lambda x: F.linear(x, weight, bias) if x.shape[0] == 1 else \
                F.linear(x.to(prefill), weight.to(prefill), bias.to(prefill)).to(x.dtype)
        return lambda x: F.linear(x, weight, bias)
    return module


def _activation(block):
    """gelu_new is tanh-approximated GELU, spelt as seven elementwise ops in transformers: here one kernel."""
    if type(block.mlp.act).__name__ == "NewGELUActivation":
        return lambda x: F.gelu(x, approximate="tanh")
    return block.mlp.act


def _norm(module):
    shape, weight, bias, eps = module.normalized_shape, module.weight, module.bias, module.eps
    return lambda x: F.layer_norm(x, shape, weight, bias, eps)


class RemoteRunner:
    """The model runs in a serving engine (korepl.backend): this keeps only the count a cache would hold,
    so that the context's window policy (when to slide) is the same as for a model run here.  `run`
    returns no logits; the session streams token ids from the engine instead (its prompt cache is the KV cache).
    """

    def __init__(self):
        self.cached_len = 0

    def run(self, chunk: list[int]) -> None:
        self.cached_len += len(chunk)
        return None

    def crop(self, length: int) -> None:
        self.cached_len = min(self.cached_len, length)

    def reset(self) -> None:
        self.cached_len = 0


def make_runner(model, device: torch.device, compiled=None, ops: OpPrecision = OpPrecision()) -> StaticRunner | HubRunner:
    if StaticRunner.supports(model) and not getattr(compiled, "uses_static_cache", False):
        return StaticRunner(model, device, compiled, ops)
    return HubRunner(model, device, compiled)  # any other model, or a GPT-2 whose forward is compiled (a benchmark's)
